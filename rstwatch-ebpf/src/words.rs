//! Zeroing and copying structs a word at a time. Left to itself LLVM turns these into calls to
//! `memset`/`memcpy`, whose byte loops cost hundreds of instructions per event at run time and
//! make the verifier walk every byte on every path.

/// Set every byte of `value` to zero.
#[inline(always)]
pub fn zero<T: Words>(value: &mut T) {
    let words = value as *mut T as *mut u64;
    for i in 0..T::WORDS {
        unsafe { core::ptr::write_volatile(words.add(i), 0) };
    }
}

/// `*dst = *src`.
#[inline(always)]
pub fn copy<T: Words>(dst: &mut T, src: &T) {
    let (d, s) = (dst as *mut T as *mut u64, src as *const T as *const u64);
    for i in 0..T::WORDS {
        unsafe { core::ptr::write_volatile(d.add(i), core::ptr::read_volatile(s.add(i))) };
    }
}

/// Plain data made of whole, aligned 8-byte words.
pub trait Words: Copy {
    const WORDS: usize = {
        assert!(size_of::<Self>().is_multiple_of(8) && align_of::<Self>() == 8);
        size_of::<Self>() / 8
    };
}

impl Words for rstwatch_common::ResetEvent {}
impl Words for rstwatch_common::Owner {}
impl Words for rstwatch_common::CountKey {}
impl Words for rstwatch_common::ConnInfo {}
