//! Network namespaces for the partition and chaos tests: two nodes, each
//! in a namespace this test creates, linked to each other by a veth pair
//! and each to the test's own namespace (where the witness's smbd and the
//! relay live) by another. Removed when dropped. Needs root.

use std::process::Command;

pub fn ip(args: &[&str]) {
    let out = Command::new("ip")
        .args(args)
        .output()
        .expect("run ip (iproute2; tools/test.sh installs it)");
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The namespaces and links; removed when dropped.
pub struct Net {
    pub ns: [String; 2],
    tag: String,
    /// Where the witness (smbd, in this namespace) listens.
    pub witness: String,
}

impl Net {
    /// nsA and nsB, linked directly (10.T.3.1 / 10.T.3.2) and each to this
    /// namespace (10.T.1.x, 10.T.2.x), where the witness listens on 10.T.0.1.
    pub fn new() -> Net {
        // Test processes may set up namespaces at the same time: choose a
        // 10.T.x.x range no one uses, under a lock held while setting up.
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(std::env::temp_dir().join("logship-test-netns.lock"))
            .unwrap();
        // SAFETY: flock on a valid descriptor owned by `lock`.
        unsafe { libc::flock(std::os::fd::AsRawFd::as_raw_fd(&lock), libc::LOCK_EX) };
        let used = String::from_utf8(
            Command::new("ip")
                .args(["-o", "addr", "show"])
                .output()
                .expect("run ip")
                .stdout,
        )
        .unwrap();
        let t = (20..240u8)
            .map(|i| (std::process::id() as u8).wrapping_add(i) % 220 + 20)
            .find(|t| !used.contains(&format!(" 10.{t}.")))
            .expect("a free 10.T.0.0/16 range");
        let tag = format!("ls{}", std::process::id());
        let ns = [format!("{tag}a"), format!("{tag}b")];
        let net = Net {
            ns: ns.clone(),
            tag: tag.clone(),
            witness: format!("10.{t}.0.1"),
        };
        for n in &ns {
            ip(&["netns", "add", n]);
            ip(&["-n", n, "link", "set", "lo", "up"]);
        }
        ip(&["addr", "add", &format!("10.{t}.0.1/32"), "dev", "lo"]);
        for (i, n) in ns.iter().enumerate() {
            let (outer, inner) = (format!("{tag}w{i}"), format!("{tag}n{i}"));
            ip(&[
                "link", "add", &outer, "type", "veth", "peer", "name", &inner,
            ]);
            ip(&["link", "set", &inner, "netns", n]);
            ip(&[
                "addr",
                "add",
                &format!("10.{t}.{}.1/24", i + 1),
                "dev",
                &outer,
            ]);
            ip(&["link", "set", &outer, "up"]);
            ip(&[
                "-n",
                n,
                "addr",
                "add",
                &format!("10.{t}.{}.2/24", i + 1),
                "dev",
                &inner,
            ]);
            ip(&["-n", n, "link", "set", &inner, "up"]);
            ip(&[
                "-n",
                n,
                "route",
                "add",
                &format!("10.{t}.0.1/32"),
                "via",
                &format!("10.{t}.{}.1", i + 1),
            ]);
        }
        let (la, lb) = (format!("{tag}pa"), format!("{tag}pb"));
        ip(&["link", "add", &la, "type", "veth", "peer", "name", &lb]);
        ip(&["link", "set", &la, "netns", &ns[0]]);
        ip(&["link", "set", &lb, "netns", &ns[1]]);
        ip(&[
            "-n",
            &ns[0],
            "addr",
            "add",
            &format!("10.{t}.3.1/24"),
            "dev",
            &la,
        ]);
        ip(&[
            "-n",
            &ns[1],
            "addr",
            "add",
            &format!("10.{t}.3.2/24"),
            "dev",
            &lb,
        ]);
        ip(&["-n", &ns[0], "link", "set", &la, "up"]);
        ip(&["-n", &ns[1], "link", "set", &lb, "up"]);
        drop(lock);
        net
    }

    pub fn t(&self) -> String {
        self.witness
            .split('.')
            .nth(1)
            .expect("10.T.0.1")
            .to_string()
    }

    /// Node `i`'s address on its link to this namespace (where the relay
    /// reaches its LMTP endpoint).
    pub fn outer(&self, i: usize) -> String {
        format!("10.{}.{}.2", self.t(), i + 1)
    }

    pub fn heartbeat(&self, i: usize, port: u16) -> String {
        format!("10.{}.3.{}:{port}", self.t(), i + 1)
    }

    /// The link between the nodes, both ways.
    pub fn peer_link(&self, up: bool) {
        let state = if up { "up" } else { "down" };
        ip(&[
            "-n",
            &self.ns[0],
            "link",
            "set",
            &format!("{}pa", self.tag),
            state,
        ]);
        ip(&[
            "-n",
            &self.ns[1],
            "link",
            "set",
            &format!("{}pb", self.tag),
            state,
        ]);
    }

    /// Node `from` cannot send to node `to` (the other way still works).
    pub fn one_way(&self, from: usize, cut: bool) {
        let to = format!("10.{}.3.{}/32", self.t(), 2 - from);
        let verb = if cut { "add" } else { "del" };
        ip(&["-n", &self.ns[from], "route", verb, "blackhole", &to]);
    }

    /// Node `i`'s link to the witness.
    pub fn witness_link(&self, i: usize, up: bool) {
        let state = if up { "up" } else { "down" };
        ip(&["link", "set", &format!("{}w{i}", self.tag), state]);
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for n in &self.ns {
            let _ = Command::new("ip").args(["netns", "del", n]).output();
        }
        for i in 0..2 {
            let _ = Command::new("ip")
                .args(["link", "del", &format!("{}w{i}", self.tag)])
                .output();
        }
        let _ = Command::new("ip")
            .args(["addr", "del", &format!("{}/32", self.witness), "dev", "lo"])
            .output();
    }
}
