"""Transports: how notifications reach the supervisor, and how answers go back.

``lxc``: LXC's seccomp proxy (``lxc.seccomp.notify.proxy``), datagrams from
each container's monitor.  ``listener``: a seccomp listener fd held by the
daemon itself (``SECCOMP_IOCTL_NOTIF_RECV``/``SEND``), for OCI runtimes and
the kernel-tier tests.  Both turn what they receive into a neutral
``dispatch.Request`` and hand it to the one ``Dispatcher``.

The OCI runtimes' seccomp agent, one job a module: ``oci_state`` (the
``ContainerProcessState`` a runtime sends, read and parsed), ``oci_agent``
(the socket, and a thread per listener it hands over) and ``oci_policy``
(which policy such a container runs under).  ``threads``: starting a serving
thread, for all of them.
"""
