"""File formats, one owner each: images (PNG, 16-bit depth, HDR), transforms (transforms.json), meshfile (OBJ folder,
GLB, zip), video (GIF/MP4). Tensors and arrays in, files out; nothing here knows about training."""
