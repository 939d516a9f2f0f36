# corral/corral:1 for real clusters: the image of the kubernetes runtime's setup-workspace and main
# containers (python -m corral.executor.runtimes.kubernetes.podside clone|collect) and of CLI steps
# (`corral ...`). Build it from the repository's root and push it to your registry:
#
#   docker build -f images/corral.Dockerfile -t registry.example.com/corral/corral:1 .
#
# then set KUBERNETES_SINGLE_JOB_STEP_IMAGE to that name. The tests never build this file: they use
# the same layout made offline by scripts/build-images.sh (scripts/corral-image.py). Both run as
# uid 1000, work with a read-only root filesystem and write nothing outside the mounted volumes.
FROM python:3.11-slim-bookworm AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY src ./src
# corral and its runtime dependencies only (no test tools), into their own prefix
RUN pip install --no-cache-dir --no-compile --prefix=/opt/corral . \
 && python -m compileall -q /opt/corral

FROM python:3.11-slim-bookworm
# git, the CA bundle and busybox; uid 1000; no setuid/setgid program left (su, mount, passwd... of
# the base image): pods forbid privilege escalation anyway, and the image may run elsewhere
RUN apt-get update \
 && apt-get install -y --no-install-recommends git ca-certificates busybox \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --gid 1000 job \
 && useradd --uid 1000 --gid 1000 --home-dir /tmp --shell /bin/sh --no-create-home job \
 && mkdir -p /data /job \
 && find / -xdev -type f -perm /6000 -exec chmod a-s {} +
COPY --from=build /opt/corral /opt/corral
ENV PATH=/opt/corral/bin:/usr/local/bin:/usr/bin:/bin \
    PYTHONPATH=/opt/corral/lib/python3.11/site-packages \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    LANG=C.UTF-8
USER 1000:1000
WORKDIR /data
CMD ["corral", "version"]
