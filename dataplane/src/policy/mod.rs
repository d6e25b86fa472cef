//! Request-admission policies and their process-wide state: authorization ([`authz`]), local
//! rate limits ([`rate_limit`]) and fault injection ([`fault`]).
//!
//! The parameters are compiled by `routing` (routes, virtual hosts) and `snapshot` (listeners);
//! the state that must hold across workers — the rate-limit buckets — lives here, in the
//! snapshot, indexed by route and virtual host id so that a request finds its limiter without a
//! lookup. Only listeners, virtual hosts and routes that configure a limit have one; the rest pay
//! one branch. The HTTP exchange applies them as one stage (`http::exchange::decide`), the L4
//! accept path applies a tcp listener's limit to new connections (`listener::admit`).

pub mod authz;
pub mod fault;
pub mod rate_limit;

use std::collections::HashMap;

use crate::routing::RouteConfig;
pub use rate_limit::{Limited, RateLimiter};

/// The rate limiters of one config generation's virtual hosts and routes.
#[derive(Debug, Default)]
pub struct Policies {
    /// By route id; `None` for routes without a limit.
    pub routes: Box<[Option<RateLimiter>]>,
    /// By virtual host id; `None` for virtual hosts without a limit.
    pub virtual_hosts: Box<[Option<RateLimiter>]>,
}

impl Policies {
    /// The limiters of `routes`, carrying state and counters over from `previous` by name.
    pub fn compile(routes: &RouteConfig, previous: &Policies, workers: usize) -> Self {
        let by_name = |list: &'_ [Option<RateLimiter>]| -> HashMap<String, usize> {
            list.iter()
                .enumerate()
                .filter_map(|(i, l)| l.as_ref().map(|l| (l.name.to_string(), i)))
                .collect()
        };
        let old_routes = by_name(&previous.routes);
        let old_vhosts = by_name(&previous.virtual_hosts);
        let mut route_limits: Vec<Option<RateLimiter>> = Vec::new();
        let mut vhost_limits: Vec<Option<RateLimiter>> = Vec::new();
        for table in routes.tables() {
            for vhost in table.virtual_hosts() {
                if let Some(limit) = &vhost.rate_limit {
                    if vhost_limits.len() <= vhost.id {
                        vhost_limits.resize_with(vhost.id + 1, || None);
                    }
                    if vhost_limits[vhost.id].is_none() {
                        let previous = old(&previous.virtual_hosts, &old_vhosts, &vhost.name);
                        vhost_limits[vhost.id] = Some(RateLimiter::new(
                            "virtual_host",
                            vhost.name.clone(),
                            limit.clone(),
                            previous,
                            workers,
                        ));
                    }
                }
                for route in vhost.routes.iter() {
                    let Some(limit) = &route.rate_limit else {
                        continue;
                    };
                    if route_limits.len() <= route.id {
                        route_limits.resize_with(route.id + 1, || None);
                    }
                    if route_limits[route.id].is_none() {
                        let previous = old(&previous.routes, &old_routes, &route.name);
                        route_limits[route.id] = Some(RateLimiter::new(
                            "route",
                            route.name.clone(),
                            limit.clone(),
                            previous,
                            workers,
                        ));
                    }
                }
            }
        }
        Self {
            routes: route_limits.into(),
            virtual_hosts: vhost_limits.into(),
        }
    }

    /// Every limiter, for metrics.
    pub fn all(&self) -> impl Iterator<Item = &RateLimiter> {
        self.virtual_hosts
            .iter()
            .chain(self.routes.iter())
            .flatten()
    }
}

/// The limiter named `name` in `list`, found through `index`.
fn old<'a>(
    list: &'a [Option<RateLimiter>],
    index: &HashMap<String, usize>,
    name: &str,
) -> Option<&'a RateLimiter> {
    index
        .get(name)
        .and_then(|&i| list.get(i))
        .and_then(Option::as_ref)
}
