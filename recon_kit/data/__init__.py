"""From a capture folder to a dataset: capture (photos, depth, cameras), masks, align (depth onto photos),
dataset (write/prepare a dataset folder; ViewSet, load_viewset)."""
