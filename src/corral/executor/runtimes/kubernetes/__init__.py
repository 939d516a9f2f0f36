"""The `kubernetes` runtime: one batch/v1 Job per corral job attempt, single pod by default.

Modules: `settings` (EXECUTOR_KUBERNETES_*, KUBERNETES_*), `shapes` (Kubernetes value checks),
`manifests` (pure builders of the Job, its Secret and PVC, and their names and labels), `rbac` (the
shipped Role, `role.yaml`, and the check of a call against it), `client` (the API client), `runtime`
(the Runtime), `podside` (the program the pods' setup and main containers run).

Importing this package imports nothing else: the runtime and its API client load only when the
kubernetes runtime is used (the registry imports `runtime` by name).
"""
