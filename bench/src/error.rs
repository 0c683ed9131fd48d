//! The harness's one error type: whatever stops a benchmark run.

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error("MongoDB: {0}")]
    Mongo(#[from] mongodb::error::Error),
    #[error("RabbitMQ: {0}")]
    Amqp(#[from] lapin::Error),
    #[error("wrk: {0}")]
    Wrk(String),
    #[error("{0}")]
    Process(String),
    #[error("setup: {0}")]
    Setup(String),
}

pub type Result<T> = std::result::Result<T, Error>;
