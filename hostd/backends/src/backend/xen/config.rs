//! A guest as an `xl` domain config, and its vif hotplug script.

use std::path::Path;

use super::{DomainType, CTL_TTY, ROOT_VDEV};
use crate::backend::rootdisk::System;
use crate::backend::vmm::{guest_mac, kernel_cmdline};
use crate::backend::{prepare, GuestNet, GuestSpec, Kernel, LaunchError, PrepareError};
use crate::netlab;

/// The Xen domain name of a guest: unique on the host across runs.
pub fn domain_name(spec: &GuestSpec) -> String {
    format!("vb-{}-{}", spec.run, spec.name)
}

/// A value for an xl config string. xl's parser has escapes, but nothing hostd generates
/// needs them: a value that would is refused instead (naming it).
pub(super) fn xl_string(what: &str, v: &str) -> Result<String, LaunchError> {
    if v.chars().any(|c| c == '"' || c == '\\' || c.is_control()) {
        return Err(prepare(
            what,
            PrepareError::Invalid(format!(
                "{v:?}: quotes, backslashes and control characters cannot go in an xl config"
            )),
        ));
    }
    Ok(format!("\"{v}\""))
}

/// What a domU's command line starts with, before the paravirtual kernel's recipe line (that
/// kernel serves QEMU microvm too, so it names no console): hvc0 is the kernel's console, and
/// `quiet` because hvc0 also carries the control channel (only errors and panics go there).
pub const DOMU_CONSOLE: &str = "console=hvc0 quiet";

/// A domU's root disk: a system image's file the guest may write (its qcow2 overlay, or its
/// private raw copy) and that file's format.
#[derive(Debug, Clone, Copy)]
pub struct RootDisk<'a> {
    /// The system image it is of (its UUID and init go on the command line).
    pub system: &'a System,
    /// The file QEMU's Xen block backend opens in dom0.
    pub path: &'a Path,
    /// `qcow2` (an overlay) or `raw` (a private copy).
    pub format: &'a str,
}

/// The `xl` domain config of one guest. `vif_script` is the hotplug script for its vif
/// (when it has a network); `root` its system image's disk (when it boots one).
pub fn domain_config(
    ty: DomainType,
    kernel: &Kernel,
    initramfs: &Path,
    spec: &GuestSpec,
    vif_script: Option<&Path>,
    root: Option<RootDisk<'_>>,
) -> Result<String, LaunchError> {
    let mut c = String::new();
    let mut line = |k: &str, v: String| c.push_str(&format!("{k} = {v}\n"));
    line("name", xl_string("domain name", &domain_name(spec))?);
    line("type", format!("\"{}\"", ty.name()));
    line("kernel", xl_string("kernel path", &kernel.path.display().to_string())?);
    line("ramdisk", xl_string("initramfs path", &initramfs.display().to_string())?);
    line(
        "cmdline",
        xl_string(
            "kernel command line",
            &kernel_cmdline(
                &format!("{DOMU_CONSOLE} {}", kernel.cmdline),
                &[],
                &root.map(|r| r.system.cmdline()).unwrap_or_default(),
                &format!("tty:{CTL_TTY}"),
                spec,
            )
            .join(" "),
        )?,
    );
    // maxmem = memory: no ballooning, the domain has exactly what was asked.
    line("memory", spec.mem_mib.to_string());
    line("maxmem", spec.mem_mib.to_string());
    line("vcpus", spec.vcpus.to_string());
    if let Some(cpus) = spec.limits.cpuset {
        // The physical CPUs the vCPUs may run on: Xen's counterpart of the cgroup cpuset.
        line("cpus", xl_string("cpuset", cpus)?);
    }
    for ev in ["on_poweroff", "on_reboot", "on_crash"] {
        line(ev, "\"destroy\"".into());
    }
    if let (Some(net), Some(script)) = (&spec.net, vif_script) {
        let script = script.display().to_string();
        if script.contains(',') {
            return Err(prepare(
                script,
                PrepareError::Invalid("a vif script path cannot contain a comma".into()),
            ));
        }
        line(
            "vif",
            format!(
                "[ {} ]",
                xl_string("vif", &format!("mac={},script={script}", guest_mac(net.addr)))?
            ),
        );
    }
    let mut disks = Vec::new();
    if let Some(disk) = &spec.data_disk {
        // target= goes last: everything after it is the path, commas included.
        disks.push(xl_string(
            "disk",
            &format!(
                "format=raw,vdev=xvda,access=ro,backendtype=qdisk,direct-io-safe,target={}",
                disk.display()
            ),
        )?);
    }
    if let Some(r) = root {
        // Read-write, but only the guest's own file: the shared image is the overlay's
        // backing file, which QEMU opens read-only. The agent finds it by its UUID.
        disks.push(xl_string(
            "root disk",
            &format!(
                "format={},vdev={ROOT_VDEV},access=rw,backendtype=qdisk,target={}",
                r.format,
                r.path.display()
            ),
        )?);
    }
    if !disks.is_empty() {
        line("disk", format!("[ {} ]", disks.join(", ")));
    }
    Ok(c)
}

/// The domain name in a config written by [`domain_config`].
pub fn config_domain_name(cfg: &str) -> Option<String> {
    cfg.lines().find_map(|l| l.strip_prefix("name = \"")?.strip_suffix('"').map(String::from))
}

/// A shell word.
pub(super) fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// The vif hotplug script of one guest. libxl runs it with `online` when the domain's
/// vif exists (netback's name in `$vif`) and `offline` when it goes. It moves the vif into
/// the fleet namespace under the guest's link name and onto the bridge; the link goes away
/// with the domain. `ip` is iproute2's (by path: a busybox shell would run its own applet).
pub fn vif_script(ip: &Path, net: &GuestNet) -> String {
    let ip = sh_quote(&ip.display().to_string());
    let ns = sh_quote(&net.fleet.netns);
    let link = sh_quote(&net.link);
    format!(
        "#!/bin/sh\n\
         # Written by hostd's xen backend; run by libxl for the guest's vif.\n\
         case \"$1\" in\n\
         online|add)\n    \
             {ip} link set dev \"$vif\" netns {ns} &&\n    \
             {ip} -n {ns} link set dev \"$vif\" name {link} &&\n    \
             {ip} -n {ns} link set dev {link} master {br} up ;;\n\
         esac\n",
        br = sh_quote(netlab::BRIDGE)
    )
}
