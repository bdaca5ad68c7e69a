//! What the agent is told: from its arguments, or for a VM's init from the kernel command
//! line (`vb.ctl=… vb.net=… vb.hostname=…`; keys with a dot are not passed to init by the
//! kernel, so they are read from /proc/cmdline). Arguments win over the command line.

use std::net::Ipv4Addr;

pub const USAGE: &str = "usage: guest-agent [--ctl fd:N|unix:PATH|tcp:HOST:PORT|tty:DEV|vport:NAME] [--net IFACE=ADDR/PREFIX]... [--mtu BYTES] [--hostname NAME] [--system-root] [--service]
  Runs as PID 1 of a guest or as a plain process; writes a ready message on the control
  channel, then runs the microbenchmarks the host asks for. A VM's init reads the same
  settings from the kernel command line as vb.ctl=, vb.net= (comma-free, repeatable),
  vb.mtu= (the MTU of every --net interface, 68-65535) and vb.hostname=;
  vb.root=UUID boots the ext4 file system UUID as the root, vb.init=image runs its /sbin/init
  with the agent as its service (--service: settings from the kernel command line, not PID 1).
  --system-root: the root is a system image's tree (containers), reported in the hello.";

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ctl {
    /// An inherited, already connected socket or tty.
    Fd(i32),
    Unix(String),
    Tcp(String),
    /// A console device set to raw mode.
    Tty(String),
    /// A virtio-serial port found by its name (`/sys/class/virtio-ports/*/name`): not a
    /// tty, and QEMU throttles it instead of dropping what it cannot pass on at once.
    Vport(String),
}

impl Ctl {
    pub fn parse(s: &str) -> Result<Self, String> {
        let (kind, rest) = s
            .split_once(':')
            .ok_or_else(|| format!("control channel {s:?}: expected KIND:VALUE"))?;
        match kind {
            "fd" => rest
                .parse()
                .map(Ctl::Fd)
                .map_err(|_| format!("control channel {s:?}: bad fd number")),
            "unix" if !rest.is_empty() => Ok(Ctl::Unix(rest.into())),
            "tcp" if rest.contains(':') => Ok(Ctl::Tcp(rest.into())),
            "tty" if rest.starts_with("/dev/") => Ok(Ctl::Tty(rest.into())),
            "vport" if !rest.is_empty() && !rest.contains('/') => Ok(Ctl::Vport(rest.into())),
            _ => Err(format!(
                "control channel {s:?}: use fd:N, unix:PATH, tcp:HOST:PORT, tty:/dev/NAME or \
                 vport:NAME"
            )),
        }
    }
    pub fn describe(&self) -> String {
        match self {
            Ctl::Fd(n) => format!("fd:{n}"),
            Ctl::Unix(p) => format!("unix:{p}"),
            Ctl::Tcp(a) => format!("tcp:{a}"),
            Ctl::Tty(d) => format!("tty:{d}"),
            Ctl::Vport(n) => format!("vport:{n}"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetCfg {
    pub iface: String,
    pub addr: Ipv4Addr,
    pub prefix: u8,
}

impl NetCfg {
    pub fn parse(s: &str) -> Result<Self, String> {
        let bad = || format!("network setting {s:?}: expected IFACE=A.B.C.D/PREFIX");
        let (iface, cidr) = s.split_once('=').ok_or_else(bad)?;
        let (addr, prefix) = cidr.split_once('/').ok_or_else(bad)?;
        let prefix: u8 = prefix.parse().map_err(|_| bad())?;
        if iface.is_empty() || iface.len() > 15 || prefix > 32 {
            return Err(bad());
        }
        Ok(Self { iface: iface.into(), addr: addr.parse().map_err(|_| bad())?, prefix })
    }
}

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Config {
    pub ctl: Option<Ctl>,
    pub net: Vec<NetCfg>,
    /// `--mtu`/`vb.mtu=`: the MTU of every `net` interface (a fleet network across hosts
    /// carries less than Ethernet's 1500 over its VXLAN). None: the kernel's default.
    pub mtu: Option<u32>,
    pub hostname: Option<String>,
    /// Settings came from the kernel command line: the agent is its own kernel's init.
    pub from_cmdline: bool,
    /// `vb.poweroff=reboot`: power off by rebooting, for machines whose kernel cannot power
    /// off (QEMU microvm and Firecracker without ACPI) but whose VMM exits on a reboot.
    pub reboot_to_poweroff: bool,
    /// `vb.root=UUID`: switch into the ext4 file system with this UUID before anything else.
    pub root: Option<String>,
    /// `vb.init=image`: the image's /sbin/init becomes PID 1, the agent its service.
    pub init_image: bool,
    /// `--service`: started by the image's init; settings from the kernel command line, and
    /// the agent still powers the machine off.
    pub service: bool,
    /// `--system-root`: the root is a system image's tree (a container over it).
    pub system_root: bool,
}

pub enum Parsed {
    Run(Config),
    Help,
    Version,
}

pub fn parse_args(args: &[String]) -> Result<Parsed, String> {
    let mut c = Config::default();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut val =
            |name: &str| it.next().cloned().ok_or_else(|| format!("{name} needs a value"));
        match a.as_str() {
            "--ctl" => c.ctl = Some(Ctl::parse(&val("--ctl")?)?),
            "--net" => c.net.push(NetCfg::parse(&val("--net")?)?),
            "--mtu" => c.mtu = Some(parse_mtu("--mtu", &val("--mtu")?)?),
            "--hostname" => c.hostname = Some(check_hostname(&val("--hostname")?)?),
            "--service" => c.service = true,
            "--system-root" => c.system_root = true,
            "-h" | "--help" => return Ok(Parsed::Help),
            "-V" | "--version" => return Ok(Parsed::Version),
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    check_mtu_has_net(&c)?;
    Ok(Parsed::Run(c))
}

/// Fills what the arguments left unset from a kernel command line.
pub fn merge_cmdline(c: &mut Config, cmdline: &str) -> Result<(), String> {
    let mut any = false;
    let mut net = Vec::new();
    for word in cmdline.split_whitespace() {
        let Some((k, v)) = word.split_once('=') else { continue };
        match k {
            "vb.ctl" if c.ctl.is_none() => c.ctl = Some(Ctl::parse(v)?),
            "vb.net" => net.push(NetCfg::parse(v)?),
            "vb.mtu" if c.mtu.is_none() => c.mtu = Some(parse_mtu("vb.mtu", v)?),
            "vb.hostname" if c.hostname.is_none() => c.hostname = Some(check_hostname(v)?),
            "vb.root" => c.root = Some(v.to_string()),
            "vb.init" => match v {
                "image" => c.init_image = true,
                "agent" => c.init_image = false,
                _ => return Err(format!("vb.init={v}: expected agent or image")),
            },
            "vb.poweroff" => match v {
                "reboot" => c.reboot_to_poweroff = true,
                "halt" => c.reboot_to_poweroff = false,
                _ => return Err(format!("vb.poweroff={v}: expected reboot or halt")),
            },
            _ => continue,
        }
        any = true;
    }
    if c.net.is_empty() {
        c.net = net;
    }
    c.from_cmdline |= any;
    check_mtu_has_net(c)
}

/// An MTU: decimal, within what Linux accepts for an IPv4 Ethernet interface (68, IPv4's
/// minimum, to 65535). The kernel command line is the host's to write, but the agent
/// reads it as untrusted input: a bad value is named, never a panic.
fn parse_mtu(name: &str, v: &str) -> Result<u32, String> {
    match v.parse::<u32>() {
        Ok(m) if (68..=65535).contains(&m) => Ok(m),
        _ => Err(format!("{name}={v:?}: expected an MTU of 68 to 65535 bytes")),
    }
}

/// An MTU applies to the `net` interfaces: one without any is a mistake of the host's.
fn check_mtu_has_net(c: &Config) -> Result<(), String> {
    match c.mtu {
        Some(m) if c.net.is_empty() => {
            Err(format!("an MTU ({m}) was given without a network interface (--net or vb.net=)"))
        }
        _ => Ok(()),
    }
}

fn check_hostname(h: &str) -> Result<String, String> {
    if h.is_empty()
        || h.len() > 64
        || !h.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
    {
        return Err(format!("hostname {h:?} is not a valid host name"));
    }
    Ok(h.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn args_and_cmdline() {
        let Parsed::Run(mut c) = parse_args(&args(&["--ctl", "fd:3", "--hostname", "g1"])).unwrap()
        else {
            panic!()
        };
        merge_cmdline(
            &mut c,
            "console=ttyS0 vb.ctl=tty:/dev/hvc0 vb.net=eth0=10.0.0.2/24 vb.hostname=other",
        )
        .unwrap();
        assert_eq!(c.ctl, Some(Ctl::Fd(3)));
        assert_eq!(c.hostname.as_deref(), Some("g1"));
        assert_eq!(
            c.net,
            vec![NetCfg { iface: "eth0".into(), addr: "10.0.0.2".parse().unwrap(), prefix: 24 }]
        );
        assert!(c.from_cmdline);
        assert!(!c.reboot_to_poweroff);
        merge_cmdline(&mut c, "vb.poweroff=reboot").unwrap();
        assert!(c.reboot_to_poweroff);
        assert!(merge_cmdline(&mut c, "vb.poweroff=maybe").is_err());
        merge_cmdline(&mut c, "vb.root=0123abcd-4567-89ab-cdef-0123456789ab vb.init=image")
            .unwrap();
        assert_eq!(c.root.as_deref(), Some("0123abcd-4567-89ab-cdef-0123456789ab"));
        assert!(c.init_image);
        assert!(merge_cmdline(&mut c, "vb.init=sometimes")
            .unwrap_err()
            .contains("vb.init=sometimes"));
        let Parsed::Run(c) = parse_args(&args(&["--service", "--system-root"])).unwrap() else {
            panic!()
        };
        assert!(c.service && c.system_root);
    }

    #[test]
    fn the_mtu_comes_from_the_command_line_and_is_checked() {
        let mut c = Config::default();
        merge_cmdline(&mut c, "vb.net=eth0=10.211.0.4/16 vb.mtu=1450").unwrap();
        assert_eq!(c.mtu, Some(1450));
        // Arguments win, as for the other settings.
        let Parsed::Run(mut c) =
            parse_args(&args(&["--net", "eth0=10.0.0.2/24", "--mtu", "9000"])).unwrap()
        else {
            panic!()
        };
        merge_cmdline(&mut c, "vb.mtu=1450").unwrap();
        assert_eq!(c.mtu, Some(9000));
        // None given: the kernel's default stays.
        let mut c = Config::default();
        merge_cmdline(&mut c, "vb.net=eth0=10.211.0.4/16").unwrap();
        assert_eq!(c.mtu, None);
        for bad in ["0", "67", "65536", "-1", "1450x", "", "99999999999"] {
            let e = merge_cmdline(
                &mut Config::default(),
                &format!("vb.net=eth0=1.2.3.4/8 vb.mtu={bad}"),
            )
            .unwrap_err();
            assert!(e.contains("vb.mtu") && e.contains("68 to 65535"), "{bad}: {e}");
        }
        let e = merge_cmdline(&mut Config::default(), "vb.mtu=1450").unwrap_err();
        assert!(e.contains("without a network interface"), "{e}");
        assert!(parse_args(&args(&["--mtu", "1450"])).err().unwrap().contains("without a network"));
        assert!(parse_args(&args(&["--net", "eth0=1.2.3.4/8", "--mtu", "big"]))
            .err()
            .unwrap()
            .contains("--mtu=\"big\""));
    }

    #[test]
    fn bad_values_are_named() {
        assert!(parse_args(&args(&["--ctl", "serial"])).err().unwrap().contains("serial"));
        assert!(parse_args(&args(&["--net", "eth0=1.2.3.4/33"]))
            .err()
            .unwrap()
            .contains("eth0=1.2.3.4/33"));
        assert!(parse_args(&args(&["--bogus"])).err().unwrap().contains("--bogus"));
        assert!(parse_args(&args(&["--ctl"])).err().unwrap().contains("needs a value"));
        assert!(parse_args(&args(&["--hostname", "a b"])).is_err());
        assert_eq!(Ctl::parse("tty:/dev/ttyS1").unwrap(), Ctl::Tty("/dev/ttyS1".into()));
        assert!(Ctl::parse("tty:ttyS1").is_err());
        assert_eq!(Ctl::parse("vport:vb.ctl").unwrap(), Ctl::Vport("vb.ctl".into()));
        assert!(Ctl::parse("vport:../x").is_err());
    }
}
