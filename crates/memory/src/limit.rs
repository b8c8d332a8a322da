//! The memory this process may still take, and which limit says so: the kernel's
//! `MemAvailable`, the address-space limit (`ulimit -v`), and the memory limits of the cgroups
//! the process runs in (a container's or a systemd unit's), v2 and v1, at every level of the
//! hierarchy. The smallest room wins; an error quotes it with its source.

use std::fmt;
use std::path::{Path, PathBuf};

/// Where a limit on this process's memory comes from, with the figures it was read from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LimitSource {
    /// The kernel's estimate of the memory that can be had without swapping.
    MemAvailable,
    /// The address-space limit (`RLIMIT_AS`, `ulimit -v`), less the address space mapped now.
    AddressSpace {
        /// The soft limit, in bytes.
        limit: u64,
        /// `VmSize`: what the process has mapped now.
        in_use: u64,
    },
    /// A cgroup's memory limit, less what the cgroup uses now (its reclaimable file cache not
    /// counted): cgroup v2's `memory.max` and `memory.current`, or v1's
    /// `memory.limit_in_bytes` and `memory.usage_in_bytes`.
    Cgroup {
        /// The cgroup's folder.
        dir: PathBuf,
        /// The file the limit was read from.
        file: &'static str,
        /// The limit, in bytes.
        limit: u64,
        /// What the cgroup uses now, in bytes.
        in_use: u64,
    },
    /// A GPU's free memory, as its driver reports it.
    Gpu {
        /// The GPU, in words (`CUDA GPU 0`).
        device: String,
        /// Its memory in all, in bytes.
        total: u64,
    },
}

/// Bytes in words for messages: GiB with one decimal, MiB below 1 GiB.
pub fn bytes_text(bytes: u64) -> String {
    if bytes >= 1 << 30 {
        format!("{:.1} GiB", bytes as f64 / (1u64 << 30) as f64)
    } else {
        format!("{:.1} MiB", bytes as f64 / (1u64 << 20) as f64)
    }
}

impl fmt::Display for LimitSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::MemAvailable => {
                f.write_str("the memory available now (MemAvailable in /proc/meminfo)")
            }
            Self::AddressSpace { limit, in_use } => write!(
                f,
                "the address-space limit (RLIMIT_AS, `ulimit -v`) of {}, {} of it mapped now",
                bytes_text(*limit),
                bytes_text(*in_use)
            ),
            Self::Cgroup {
                dir,
                file,
                limit,
                in_use,
            } => write!(
                f,
                "the cgroup limit {} of {} ({}), {} of it in use",
                file,
                dir.display(),
                bytes_text(*limit),
                bytes_text(*in_use)
            ),
            Self::Gpu { device, total } => write!(
                f,
                "the free memory of {device} (of {} in all, as its driver reports it)",
                bytes_text(*total)
            ),
        }
    }
}

/// One limit: the bytes this process may still take under it, and where it comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemoryLimit {
    /// Bytes still free under the limit.
    pub room: u64,
    /// What sets it.
    pub source: LimitSource,
}

/// Every limit on this process's memory that the OS tells of (none where `/proc` does not
/// tell: not Linux).
pub fn memory_limits() -> Vec<MemoryLimit> {
    let read = proc_text;
    let mut limits = Vec::new();
    if let Some(available) = meminfo_available(&read("/proc/meminfo")) {
        limits.push(MemoryLimit {
            room: available,
            source: LimitSource::MemAvailable,
        });
    }
    limits.extend(address_space_limit(&read("/proc/self/status")));
    limits.extend(cgroup_limits(
        &read("/proc/self/cgroup"),
        &read("/proc/self/mountinfo"),
    ));
    limits
}

/// A `/proc` file's text; empty where it cannot be read (not Linux), which every parser here
/// takes as "nothing known".
fn proc_text(path: &str) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// The limit with the least room: what a process about to allocate must fit under.
pub fn memory_limit() -> Option<MemoryLimit> {
    memory_limits().into_iter().min_by_key(|limit| limit.room)
}

/// `MemAvailable` of a `/proc/meminfo` text, in bytes.
fn meminfo_available(meminfo: &str) -> Option<u64> {
    kib_field(meminfo, "MemAvailable:")
}

/// A `NAME:  123 kB` field of a `/proc` text, in bytes.
pub(crate) fn kib_field(text: &str, name: &str) -> Option<u64> {
    let kib: u64 = text
        .lines()
        .find_map(|line| line.strip_prefix(name))?
        .trim()
        .strip_suffix("kB")?
        .trim()
        .parse()
        .ok()?;
    Some(kib * 1024)
}

/// The room under `RLIMIT_AS`, given `/proc/self/status` for the address space in use; `None`
/// when unlimited.
fn address_space_limit(status: &str) -> Option<MemoryLimit> {
    let limit = rustix::process::getrlimit(rustix::process::Resource::As).current?;
    let in_use = kib_field(status, "VmSize:").unwrap_or(0);
    Some(MemoryLimit {
        room: limit.saturating_sub(in_use),
        source: LimitSource::AddressSpace { limit, in_use },
    })
}

/// The limits of the memory cgroups this process is in, at every level from its own cgroup up
/// to the hierarchy's root, from `/proc/self/cgroup` and `/proc/self/mountinfo`.
fn cgroup_limits(proc_cgroup: &str, mountinfo: &str) -> Vec<MemoryLimit> {
    cgroup_dirs(proc_cgroup, mountinfo)
        .into_iter()
        .flat_map(|(version, own, mount)| {
            own.ancestors()
                .take_while(|dir| dir.starts_with(&mount))
                .filter_map(|dir| cgroup_limit(version, dir))
                .collect::<Vec<_>>()
        })
        .collect()
}

/// The cgroup interface a hierarchy speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CgroupVersion {
    /// cgroup v1's memory controller (`memory.limit_in_bytes`).
    V1,
    /// cgroup v2's unified hierarchy (`memory.max`).
    V2,
}

impl CgroupVersion {
    /// The file that holds a cgroup's memory limit.
    pub fn limit_file(self) -> &'static str {
        match self {
            Self::V1 => "memory.limit_in_bytes",
            Self::V2 => "memory.max",
        }
    }
}

/// The memory cgroups this process is in, one per mounted hierarchy: the interface and the
/// cgroup's folder (a test makes a limited cgroup below it).
pub fn own_memory_cgroups() -> Vec<(CgroupVersion, PathBuf)> {
    cgroup_dirs(
        &proc_text("/proc/self/cgroup"),
        &proc_text("/proc/self/mountinfo"),
    )
    .into_iter()
    .map(|(version, dir, _)| (version, dir))
    .collect()
}

/// The process's own memory cgroup folder in each mounted hierarchy that has one, with the
/// hierarchy's mount point: `(version, folder, mount point)`.
fn cgroup_dirs(proc_cgroup: &str, mountinfo: &str) -> Vec<(CgroupVersion, PathBuf, PathBuf)> {
    // mountinfo: `id parent major:minor root mount-point options - fstype source super-options`.
    let mounts: Vec<(CgroupVersion, &str, &str)> = mountinfo
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let dash = fields.iter().position(|f| *f == "-")?;
            let (root, mount_point) = (*fields.get(3)?, *fields.get(4)?);
            let (fstype, options) = (*fields.get(dash + 1)?, *fields.get(dash + 3)?);
            match fstype {
                "cgroup2" => Some((CgroupVersion::V2, root, mount_point)),
                "cgroup" if options.split(',').any(|o| o == "memory") => {
                    Some((CgroupVersion::V1, root, mount_point))
                }
                _ => None,
            }
        })
        .collect();
    // /proc/self/cgroup: `id:controllers:path`; v2's line has id 0 and no controllers.
    proc_cgroup
        .lines()
        .filter_map(|line| {
            let mut parts = line.splitn(3, ':');
            let (id, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
            let version = if id == "0" && controllers.is_empty() {
                CgroupVersion::V2
            } else if controllers.split(',').any(|c| c == "memory") {
                CgroupVersion::V1
            } else {
                return None;
            };
            let (_, root, mount_point) = mounts.iter().find(|(v, _, _)| *v == version)?;
            // The path is relative to the cgroup namespace's root; a mount of a sub-tree
            // (`root` other than `/`) shows the part below it.
            let below = path
                .strip_prefix(root)
                .unwrap_or(path)
                .trim_start_matches('/');
            let mount = PathBuf::from(mount_point);
            Some((version, mount.join(below), mount))
        })
        .collect()
}

/// The limit of the cgroup in `dir`, `None` where it has none or its files cannot be read.
fn cgroup_limit(version: CgroupVersion, dir: &Path) -> Option<MemoryLimit> {
    let read = |file: &str| std::fs::read_to_string(dir.join(file)).ok();
    let number = |file: &str| read(file)?.trim().parse::<u64>().ok();
    let file = version.limit_file();
    // v2's "max" does not parse: no limit.
    let limit = number(file)?;
    let (usage, inactive_file) = match version {
        CgroupVersion::V2 => ("memory.current", "inactive_file"),
        CgroupVersion::V1 => ("memory.usage_in_bytes", "total_inactive_file"),
    };
    // v1 writes "no limit" as the largest page-aligned i64.
    if limit >= 1 << 62 {
        return None;
    }
    let reclaimable = read("memory.stat")
        .and_then(|stat| {
            stat.lines().find_map(|line| {
                let (key, value) = line.split_once(' ')?;
                (key == inactive_file).then(|| value.trim().parse::<u64>().ok())?
            })
        })
        .unwrap_or(0);
    let in_use = number(usage)?.saturating_sub(reclaimable);
    Some(MemoryLimit {
        room: limit.saturating_sub(in_use),
        source: LimitSource::Cgroup {
            dir: dir.to_path_buf(),
            file,
            limit,
            in_use,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meminfo_and_status_fields_are_read_in_bytes() {
        let meminfo = "MemTotal:       24683784 kB\nMemAvailable:   24137944 kB\n";
        assert_eq!(meminfo_available(meminfo), Some(24_137_944 * 1024));
        assert_eq!(meminfo_available("MemTotal: 1 kB\n"), None);
        assert_eq!(kib_field("VmSize:\t  2048 kB\n", "VmSize:"), Some(2 << 20));
    }

    /// A cgroup tree in a temporary folder: v1's memory hierarchy and v2's unified one, as a
    /// hybrid host mounts them, with the `/proc` texts that point into it.
    struct Tree {
        root: tempfile::TempDir,
    }

    impl Tree {
        fn new() -> Self {
            Self {
                root: tempfile::tempdir().unwrap(),
            }
        }

        fn path(&self, relative: &str) -> PathBuf {
            self.root.path().join(relative)
        }

        fn write(&self, relative: &str, text: &str) {
            let path = self.path(relative);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, text).unwrap();
        }

        fn mountinfo(&self) -> String {
            format!(
                "31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755\n\
                 35 31 0:32 / {v1} rw,relatime - cgroup cgroup rw,memory\n\
                 36 31 0:33 / {cpu} rw,relatime - cgroup cgroup rw,cpu\n\
                 41 31 0:38 / {v2} rw,relatime - cgroup2 cgroup2 rw\n",
                v1 = self.path("memory").display(),
                cpu = self.path("cpu").display(),
                v2 = self.path("unified").display(),
            )
        }
    }

    #[test]
    fn a_v1_limit_is_found_through_proc_self_cgroup_and_its_parents_count_too() {
        let tree = Tree::new();
        // The process's cgroup has no limit; its parent has 8 GiB, 3 GiB in use of which 1 GiB
        // is file cache that can be reclaimed.
        tree.write("memory/jobs/memory.limit_in_bytes", "8589934592\n");
        tree.write("memory/jobs/memory.usage_in_bytes", "3221225472\n");
        tree.write(
            "memory/jobs/memory.stat",
            "cache 1\ntotal_inactive_file 1073741824\n",
        );
        tree.write(
            "memory/jobs/a1/memory.limit_in_bytes",
            "9223372036854771712\n",
        );
        tree.write("memory/jobs/a1/memory.usage_in_bytes", "1000\n");
        tree.write("memory/memory.limit_in_bytes", "9223372036854771712\n");
        tree.write("memory/memory.usage_in_bytes", "5\n");
        let proc_cgroup = "5:cpu:/\n4:memory:/jobs/a1\n0::/\n";
        let limits = cgroup_limits(proc_cgroup, &tree.mountinfo());
        assert_eq!(
            limits,
            vec![MemoryLimit {
                room: 6 << 30,
                source: LimitSource::Cgroup {
                    dir: tree.path("memory/jobs"),
                    file: "memory.limit_in_bytes",
                    limit: 8 << 30,
                    in_use: 2 << 30,
                },
            }]
        );
        let message = limits[0].source.to_string();
        assert!(message.contains("memory.limit_in_bytes") && message.contains("8.0 GiB"));
    }

    #[test]
    fn a_v2_limit_is_read_from_the_unified_hierarchy_and_max_means_none() {
        let tree = Tree::new();
        tree.write("unified/user.slice/job.scope/memory.max", "2147483648\n");
        tree.write(
            "unified/user.slice/job.scope/memory.current",
            "1073741824\n",
        );
        tree.write(
            "unified/user.slice/job.scope/memory.stat",
            "anon 1\ninactive_file 536870912\n",
        );
        tree.write("unified/user.slice/memory.max", "max\n");
        tree.write("unified/user.slice/memory.current", "7\n");
        let proc_cgroup = "4:memory:/\n0::/user.slice/job.scope\n";
        let limits = cgroup_limits(proc_cgroup, &tree.mountinfo());
        assert_eq!(limits.len(), 1, "{limits:?}");
        assert_eq!(limits[0].room, (2 << 30) - (1 << 29));
        assert!(limits[0].source.to_string().contains("memory.max"));
    }

    #[test]
    fn a_mount_of_a_sub_tree_is_joined_below_its_root() {
        // In a container the cgroup path can start with the part of the tree its mount hides.
        let tree = Tree::new();
        tree.write("unified/memory.max", "1048576\n");
        tree.write("unified/memory.current", "0\n");
        let mountinfo = format!(
            "41 31 0:38 /kubepods/pod1 {} rw - cgroup2 cgroup2 rw\n",
            tree.path("unified").display()
        );
        let limits = cgroup_limits("0::/kubepods/pod1\n", &mountinfo);
        assert_eq!(limits.len(), 1, "{limits:?}");
        assert_eq!(limits[0].room, 1 << 20);
    }

    #[test]
    fn without_cgroup_files_there_is_no_cgroup_limit() {
        let tree = Tree::new();
        assert!(cgroup_limits("4:memory:/gone\n0::/gone\n", &tree.mountinfo()).is_empty());
        assert!(cgroup_limits("", "").is_empty());
    }

    #[test]
    fn the_smallest_room_is_the_limit_and_meminfo_is_always_among_them() {
        let limits = memory_limits();
        if std::path::Path::new("/proc/meminfo").exists() {
            assert!(limits.iter().any(|l| l.source == LimitSource::MemAvailable));
            let least = memory_limit().unwrap();
            assert!(limits.iter().all(|l| l.room >= least.room));
        }
    }
}
