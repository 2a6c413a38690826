"""Datasets read from the user's own files: ``arrays`` (.npz or .npy), ``image_folder`` and
``csv``. Importing this package registers them.

Each reads its files, checks them (one ``UserError`` per problem, naming the fix) and returns
the same ``fedsim.data.Dataset`` as the built-in datasets, so every partitioner, engine and
workload that reads samples takes them. Relative paths start at the scenario file's folder.
"""

from fedsim.files import arrays as arrays
from fedsim.files import images as images
from fedsim.files import tables as tables
