"""Start paths: how a container comes to be supervised (LXC's config and python-lxc)."""
