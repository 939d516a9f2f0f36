"""The `firecracker` runtime: each job in its own microVM (qemu `-M microvm`; see `runtime`).

Modules: `assets` (kernel, initramfs, packages: `corral executor install firecracker`),
`initramfs` (the cpio writer, kernel module dependencies), `guest/init.sh` (PID 1 in the VM),
`vm` (boot one VM, its console and control lines, kill), `images` (docker image -> ext4 disk, cached).
"""
