"""Learner connector pieces, one per module (as RLlib lays out its own): the advantages
piece that replaces PPO's GAE, and the forwards a batch's update can take precomputed."""
