"""The shipped model's photo corpus: every photo package this machine can install offline,
split by whole package into training, validation and test (:mod:`multigrain.data.corpus.build`),
and held-out copy-detection sets made with Pillow alone (:mod:`multigrain.data.corpus.heldout`)."""
