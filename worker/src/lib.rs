//! `riskfeat-worker` as a library: the feature server's modules, so that the
//! binary (`main.rs`) stays a thin entry point and the developer tools
//! (`cargo xtask bench worker`) run the worker's own SQL, never a copy.
//!
//! The map: [`run`] wires [`watch`] to [`reload`] (the one code path for
//! start-up and reload: new pools from [`pool`] validated and swapped into
//! [`app`], parameters from [`params`], whose rules [`params_schema`] turns into
//! configd's schema of the `features` namespace); [`http`] serves the API with the
//! math of [`features`]; [`lag`] measures replica lag; [`stall`] watches the runtime threads; [`health`] and
//! [`metrics`] report; [`config`] is the worker's config file.

pub mod app;
pub mod config;
pub mod features;
pub mod health;
pub mod http;
pub mod lag;
pub mod metrics;
pub mod params;
pub mod params_schema;
pub mod pool;
pub mod reload;
pub mod run;
pub mod source;
pub mod stall;
pub mod watch;
