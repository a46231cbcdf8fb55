//! One-shot serving experiments. (Skeleton: the experiments issue fills this in.)

pub mod bench;
pub mod kvscale;
pub mod sweep;
