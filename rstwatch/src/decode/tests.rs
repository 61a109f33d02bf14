use super::*;

fn event(ts_ns: u64, skaddr: u64, flags: u32) -> ResetEvent {
    let mut ev: ResetEvent = unsafe { std::mem::zeroed() };
    ev.ts_ns = ts_ns;
    ev.skaddr = skaddr;
    ev.flags = flags;
    ev
}

#[test]
fn a_false_receive_is_dropped_and_a_real_one_released_after_the_hold() {
    let stamps = |out: &Vec<Record>| {
        out.iter()
            .map(|r| match r {
                Record::Reset(e) => e.ts_ns,
                Record::SocketError(e) => e.ts_ns,
            })
            .collect::<Vec<_>>()
    };
    let mut filter = FalseReceiveFilter::new();
    let mut out = Vec::new();
    filter.push(
        Record::Reset(event(1_000, 0xa, event_flag::RECEIVE_WHILE_CLOSING)),
        &mut out,
    );
    filter.push(
        Record::Reset(event(2_000, 0xa, event_flag::UNDID_FALSE_RECEIVE)),
        &mut out,
    );
    assert_eq!(stamps(&out), vec![2_000]);

    out.clear();
    filter.push(
        Record::Reset(event(3_000, 0xb, event_flag::RECEIVE_WHILE_CLOSING)),
        &mut out,
    );
    filter.push(Record::Reset(event(4_000, 0xc, 0)), &mut out);
    assert_eq!(stamps(&out), vec![4_000]);
    filter.release_older_than(3_000 + HOLD_NS, &mut out);
    assert_eq!(stamps(&out), vec![4_000, 3_000]);
}

#[test]
fn records_decode_by_kind_and_reject_strangers() {
    let mut ev = event(5, 0xd, 0);
    ev.kind = EVENT_RESET;
    let bytes = unsafe {
        std::slice::from_raw_parts((&ev as *const ResetEvent).cast::<u8>(), size_of::<ResetEvent>())
    };
    assert!(matches!(from_bytes(bytes), Some(Record::Reset(e)) if e.skaddr == 0xd));
    assert!(
        from_bytes(&bytes[..16]).is_none(),
        "a short record is not read past its end"
    );
    assert!(from_bytes(&[9, 0, 0, 0, 0, 0, 0, 0]).is_none(), "unknown kind");
}

#[test]
fn jiffies_convert_at_the_kernel_hz_and_never_go_negative() {
    assert_eq!(jiffies_to_duration(250, 250), Duration::from_secs(1));
    assert_eq!(jiffies_to_duration(u32::MAX, 250), Duration::ZERO);
}

#[test]
fn an_age_in_jiffies_converts_past_u32_and_keeps_its_fraction() {
    assert_eq!(long_jiffies_to_duration(0, 250), Duration::ZERO);
    assert_eq!(long_jiffies_to_duration(1, 250), Duration::from_millis(4));
    assert_eq!(
        long_jiffies_to_duration(301, 300),
        Duration::from_nanos(1_003_333_333)
    );
    // 60 days at HZ=1000 is past 2^32 jiffies; the product with 1e9 would overflow a u64.
    let sixty_days = 60 * 86_400 * 1000u64;
    assert_eq!(
        long_jiffies_to_duration(sixty_days, 1000),
        Duration::from_secs(60 * 86_400)
    );
    assert_eq!(
        long_jiffies_to_duration(u64::MAX, 0).as_secs(),
        u64::MAX,
        "HZ 0 is read as 1"
    );
}
