"""How results are measured: the protocol (splits, seeds, dev/test tasks), the judges that grade
images, the alignment scorers, and the metrics. Nothing here trains or changes a model."""
