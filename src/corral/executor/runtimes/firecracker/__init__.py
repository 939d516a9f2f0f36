"""The `firecracker` runtime: each job in its own microVM (qemu `-M microvm`; see `runtime`).

Modules: `assets` (kernel, initramfs, packages: `corral executor install firecracker`),
`initramfs` (the cpio writer, kernel module dependencies), `guest/init.sh` (PID 1 in the VM),
`vm` (boot one VM, its console and control lines, `go`, kill), `images` (docker image -> ext4 disk,
cached), `shares` (a VM's directory: made generic, the job staged into it late), `pool` (the warm
pool of VMs booted ahead), `guestjob` (job.sh), `clistep` (CLI steps' root in the VM), `vmnet`
(networked jobs), `fcapi` (Firecracker's API socket).
"""
