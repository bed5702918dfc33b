"""The node agent: the NRI plugin that manages containers, and the operations on them."""
