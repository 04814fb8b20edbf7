//! IDunno worker: pulls batches from the coordinator and runs candle models on them.

pub mod models;
