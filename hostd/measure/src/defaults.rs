//! The defaults `hostd bench`, `hostd boot` and campaign files share, in one place, so that
//! no two commands state a default differently: a figure from `hostd bench` or `hostd boot`
//! without options is measured as a default campaign measures it. (`hostd xen-lab`, whose
//! guests run under a nested emulator, states its own smaller CPU workload in its help.)

/// Guest memory, MiB.
pub const MEM_MIB: u32 = 128;
/// vCPUs per guest.
pub const VCPUS: u32 = 1;
/// Seconds from a guest's launch to its ready message before it counts as failed.
pub const BOOT_TIMEOUT_S: u64 = 300;
/// Seconds one benchmark request may take.
pub const BENCH_TIMEOUT_S: u64 = 600;
/// Seconds a booted fleet idles before its memory is read.
pub const SETTLE_S: u64 = 3;
/// Counted repetitions of every measurement.
pub const REPS: u32 = 3;
/// Discarded warm-up runs before them.
pub const WARMUP: u32 = 1;
/// Fleet sizes of concurrent startup and memory occupation.
pub const STARTUP_SIZES: [usize; 3] = [1, 10, 50];

/// CPU: Newton steps towards √2 (about 1.1 s natively on the reference host).
pub const CPU_ROUNDS: u64 = 200_000_000;
/// Memory: passes of C = A + B + C (about 1.2 s natively at the "auto" size).
pub const MEM_PASSES: u32 = 12;
/// Disk: bytes read per run, MiB (about 1 s of O_DIRECT reads natively).
pub const DISK_MIB: u64 = 1024;
/// Disk: block size, KiB.
pub const DISK_BLOCK_KIB: u32 = 256;
/// Network: duration of each stream or request/response run, ms.
pub const NET_DURATION_MS: u32 = 1000;
/// Network: stream write size, bytes.
pub const NET_MSG_SIZE: u32 = 65536;
