#!/usr/bin/env python3
"""Run a command under an OCI seccomp profile, loaded the way runc loads it for containerd.

This checks a profile such as ringmesh.json on a workstation before it goes to a node: if
ringmesh starts with io_uring and proxies traffic under it here, a missing syscall will not
surprise you in a pod. It needs root (or no_new_privs, which libseccomp sets) and libseccomp's
Python binding (Debian/Ubuntu: apt-get install python3-seccomp; use /usr/bin/python3).

    sudo /usr/bin/python3 deploy/seccomp/try-profile.py deploy/seccomp/ringmesh.json -- \
        target/release/ringmesh --config deploy/examples/quickstart.toml --io uring

What it reproduces from runc: default action and errno, the listed architectures, every rule
with its argument conditions (OR-ed when a call has several), per-rule errno, and skipping of
call names that this libseccomp or architecture does not know. What it does not: capabilities,
namespaces, or Docker's `includes`/`excludes`/`archMap` keys (containerd ignores those too, which
is why ringmesh.json is written without them).
"""

import json
import os
import sys

try:
    import seccomp
except ImportError:
    sys.exit("try-profile.py: needs libseccomp's Python binding (apt-get install python3-seccomp)")

ARCHES = {
    "SCMP_ARCH_X86_64": seccomp.Arch.X86_64,
    "SCMP_ARCH_X86": seccomp.Arch.X86,
    "SCMP_ARCH_X32": seccomp.Arch.X32,
    "SCMP_ARCH_AARCH64": seccomp.Arch.AARCH64,
    "SCMP_ARCH_ARM": seccomp.Arch.ARM,
}

OPS = {
    "SCMP_CMP_NE": seccomp.NE,
    "SCMP_CMP_LT": seccomp.LT,
    "SCMP_CMP_LE": seccomp.LE,
    "SCMP_CMP_EQ": seccomp.EQ,
    "SCMP_CMP_GE": seccomp.GE,
    "SCMP_CMP_GT": seccomp.GT,
    "SCMP_CMP_MASKED_EQ": seccomp.MASKED_EQ,
}


def action(name, errno_ret):
    if name == "SCMP_ACT_ALLOW":
        return seccomp.ALLOW
    if name == "SCMP_ACT_ERRNO":
        return seccomp.ERRNO(errno_ret)
    if name == "SCMP_ACT_LOG":
        return seccomp.LOG
    if name in ("SCMP_ACT_KILL", "SCMP_ACT_KILL_THREAD"):
        return seccomp.KILL
    if name == "SCMP_ACT_KILL_PROCESS":
        return seccomp.KILL_PROCESS
    sys.exit(f"try-profile.py: unsupported action {name}")


def build(profile):
    default_errno = profile.get("defaultErrnoRet", 1)  # runc's default: EPERM
    filt = seccomp.SyscallFilter(defaction=action(profile["defaultAction"], default_errno))
    for arch in profile.get("architectures", []):
        if arch not in ARCHES:
            sys.exit(f"try-profile.py: unsupported architecture {arch}")
        try:
            filt.add_arch(ARCHES[arch])
        except RuntimeError:
            pass  # the native architecture is already in the filter
    skipped = []
    for rule in profile.get("syscalls", []):
        act = action(rule["action"], rule.get("errnoRet", default_errno))
        # OCI: `value` is the mask and `valueTwo` the expected value for SCMP_CMP_MASKED_EQ.
        args = [
            seccomp.Arg(a["index"], OPS[a["op"]], a["value"], a.get("valueTwo", 0))
            for a in rule.get("args", [])
        ]
        for name in rule["names"]:
            try:
                filt.add_rule(act, name, *args)
            except (RuntimeError, ValueError):
                skipped.append(name)  # unknown here (another architecture's call): runc skips it too
    return filt, skipped


def main():
    argv = sys.argv[1:]
    if len(argv) < 3 or argv[1] != "--":
        sys.exit("usage: try-profile.py PROFILE.json -- COMMAND [ARG...]")
    with open(argv[0]) as f:
        profile = json.load(f)
    filt, skipped = build(profile)
    if skipped:
        print(f"try-profile.py: not on this architecture, skipped: {' '.join(sorted(set(skipped)))}",
              file=sys.stderr)
    filt.load()
    os.execvp(argv[2], argv[2:])


if __name__ == "__main__":
    main()
