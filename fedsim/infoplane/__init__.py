"""The information plane (Chelombiev, Houghton & O'Donnell, ICLR 2019): estimators, the SZT
data set, and the ``information_plane`` analysis. Importing it registers ``szt`` and the
analysis. Nothing here imports Flower or the workloads."""

from fedsim.infoplane import analysis as analysis
from fedsim.infoplane import szt as szt
