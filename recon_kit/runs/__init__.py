"""Run folders: folder (RunDir, the only reader/writer of a run folder), run (train into one / load a finished one),
table (runs as a table), sweep (grids of runs; params: their names), ray_engine (runs as Ray Tune trials), batch (every
capture of a folder), animation (training.gif), launch (torchrun), notebook (papermill)."""
