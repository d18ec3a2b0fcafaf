"""EISEN Spelke-object segmentation: network, affinity sampling, KProp, competition, training, evaluation."""
