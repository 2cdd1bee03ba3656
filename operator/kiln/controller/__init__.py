"""The operator: kopf's handlers, the reconcilers of ImageBuilds (builds) and RegistryLogins (logins), and what
they share (runtime)."""
