"""Data plumbing: indexed webdataset shards, the built-in data cache, batch samplers, loaders.

Light on import: the heavy parts (webdataset, torch) load with the submodules.
"""
