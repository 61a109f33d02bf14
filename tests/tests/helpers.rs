//! The helpers themselves, without the daemon: network namespaces, per-netns sysctls and MIBs,
//! and the kernel side of the scenarios (each checks the namespace's `Tcp: OutRsts`).
//! Needs root.

use rstwatch_tests::netns::{self, NetNs};
use rstwatch_tests::scenarios;

#[test]
fn netns_sysctl_is_private_and_vanishes() {
    assert!(rstwatch_tests::is_root(), "these tests need root");
    let host = netns::read_sysctl("net/ipv4/tcp_abort_on_overflow").unwrap();
    let name;
    {
        let ns = NetNs::new().unwrap();
        name = ns.name().to_string();
        ns.sysctl_set("net.ipv4.tcp_abort_on_overflow", "1").unwrap();
        assert_eq!(ns.sysctl_get("net.ipv4.tcp_abort_on_overflow").unwrap(), "1");
        assert_eq!(
            netns::read_sysctl("net/ipv4/tcp_abort_on_overflow").unwrap(),
            host
        );
        assert!(std::path::Path::new(&ns.path()).exists());
    }
    assert!(
        !std::path::Path::new(&format!("/run/netns/{name}")).exists(),
        "netns not removed"
    );
}

#[test]
fn kernel_side_of_refused_connects() {
    assert!(rstwatch_tests::is_root(), "these tests need root");
    let ns = NetNs::new().unwrap();
    let before = ns.tcp_mib("OutRsts").unwrap();
    let scn = scenarios::Scenario {
        name: "refused_v4_helper",
        port: scenarios::port_base() + 90,
        about: "",
        sysctls: &[],
        run: |p| scenarios::refused_many(p, 50),
    };
    let out = scenarios::run_in(&ns, &scn).unwrap();
    assert_eq!(out.out_rsts, 50);
    assert_eq!(ns.tcp_mib("OutRsts").unwrap() - before, 50);
}
