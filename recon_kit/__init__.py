"""recon-kit: multi-view images (+ depth) to a textured, relightable triangle mesh.

Conventions (stated once, tested in tests/test_cameras.py):
  * camera-to-world matrices follow NeRF/OpenGL: camera x right, y up, looking down -z;
  * images are row-major with row 0 at the top; pixel (row i, col j) has its centre at (j + 0.5, i + 0.5);
  * colour tensors name their space: ``rgb_linear`` vs ``rgb_srgb``;
  * the world frame is the one of ``transforms.json`` (no hidden axis swaps, unlike nvdiffrec's +90 deg x).
"""

__version__ = "0.1.0"
