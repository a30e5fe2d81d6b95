"""Learn2PD (arXiv 2509.25188): the learned filter (`filter`), its oracle traces (`traces`) and its training
(`training`). Import the submodules: the package itself imports nothing, so that the decoding package can use
the filter while `traces` uses the decoding package, without an import cycle."""
