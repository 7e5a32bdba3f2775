"""A data plane for the real control plane: the pods of the namespaces a test enables run as
real processes (the app, Postgres, Redis, the exporters, Prometheus, the Pushgateway) in network
namespaces at the IPs kwok gives them, routed from the host, so the API server's pod and service
proxies reach them as on a cluster; an nginx plays the ingress controller for the canary weight.

Entry points:

- the ``data_plane`` session fixture (``tests/conftest.py``): a running ``DataPlane`` on the
  session's control plane; ``data_plane.enable(namespace)`` before the namespace's pods are
  created (before ``pulumi up`` or an apply);
- ``IngressController(api, namespace)`` (``ingress.py``): nginx routing to the stable and canary
  Services' ready pods with the canary Ingress's weight, for load through the front door;
- ``Images`` (``images.py``): what each image runs here; ``data_plane.images.portal(ref, env=...,
  migrations=...)`` registers a build of the app (a faulty release, a version with a migration of
  its own).

See ``controller.py`` for how it works and ``network.py`` for the network.
"""

from tests.dataplane.controller import DataPlane, DataPlaneError
from tests.dataplane.images import Image, Images, default_images

__all__ = ["DataPlane", "DataPlaneError", "Image", "Images", "default_images"]
