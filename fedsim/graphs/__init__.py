"""Graphs for partitioned GNN training: datasets, graph partitioners and their federation.

Importing this package registers the graph datasets (in ``DATASETS``) and the graph
partitioners (in ``GRAPH_PARTITIONERS``).
"""

from fedsim.graphs import datasets as datasets
from fedsim.graphs import partition as partition
from fedsim.graphs.federation import GraphFederation, federate_graph
from fedsim.graphs.graph import GraphDataset, Subgraph

__all__ = ["GraphDataset", "GraphFederation", "Subgraph", "federate_graph"]
