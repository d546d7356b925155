"""What is optimised: hashgrid (encoding), materials (every material is ``material(gbuffer, rasterizer)``), dmtet
and flexicubes (pass-1 geometry, ``geometry.method``), fixed_mesh (pass-2 geometry), hull (visual hull used to
initialise and to check poses)."""
