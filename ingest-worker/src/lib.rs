//! The ingest worker: the `load` step. It consumes chunks from RabbitMQ ([`consume`], on a
//! [`subscribe`]d queue) and loads each delivered one ([`delivery`]) into its batch's staging
//! table with binary COPY ([`load`]), acknowledging a message only after the PostgreSQL
//! transaction that loaded it committed. Stateless: start as many as needed, on any host.

pub mod config;
pub mod consume;
pub mod delivery;
pub mod health;
pub mod load;
pub mod subscribe;

pub use config::Config;
pub use consume::run;
