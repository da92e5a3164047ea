//! Keyflow's domain core: pure types and functions with no I/O.
//!
//! Everything here is deterministic given its inputs (the clock is injected),
//! so it is unit- and property-tested without a database or a socket.

pub mod clock;
pub mod contacts;
pub mod error;
pub mod events;
pub mod histogram;
pub mod ip;
pub mod json_limits;
pub mod key_settings;
pub mod keys;
pub mod plan;
pub mod rate_limit;
pub mod restrictions;
pub mod scopes;
pub mod text;
pub mod timefmt;
pub mod typed_text;
pub mod workflows;

pub use clock::{Clock, ManualClock, SystemClock};
pub use error::{ErrorCode, FieldError};
pub use ip::{IpAllowList, IpRule};
pub use keys::{Environment, KeyDigest, KeyFormatError, KeyType, ParsedKey};
pub use plan::{Plan, Role};
pub use rate_limit::{GcraDecision, RateLimit};
pub use scopes::{Scope, ScopeSet};
