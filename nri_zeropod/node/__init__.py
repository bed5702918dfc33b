"""The local node: a real containerd (CRI + NRI + CNI) on one machine, driven the way kubelet drives it."""
