"""A local Kubernetes cluster from pinned upstream releases, for kiln's real-cluster tier and `make run`.

Every component is built from its Go module (see versions.py) into a cache outside the
checkout, once per version: etcd, kube-apiserver, kube-controller-manager, kube-scheduler,
kubelet, kubectl, containerd, BuildKit and rootlesskit. Nothing is downloaded but Go
modules and Debian packages.
"""
