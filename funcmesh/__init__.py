"""funcmesh: serverless functions the Kubeless way, service discovery and a mesh, on one machine."""

__version__ = "0.1.0"
