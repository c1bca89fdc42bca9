//! Early delivery (`delivery.early_ms`): at the final dot, before the
//! message is committed, offer it to the next hop for up to that long.
//! When every recipient is accepted there, the client gets its 250 with
//! nothing written to the queue; when some are, the message is committed
//! with those marked delivered (never sent twice); when the time runs out
//! first, the message is committed as usual and the attempt's outcome is
//! left to the normal delivery.
//!
//! Place in the pipeline: a data-callout stage (`crate::scan`), using the
//! shard's transports (`crate::deliver::attempt::Deliverer`) as a library
//! — the same transports the delivery engine uses — but none of the
//! engine's state. Only messages whose every recipient goes out by SMTP
//! without the routers are tried (a Maildir, LMTP or pipe delivery is a
//! commit of its own).

use std::rc::Rc;
use std::time::Duration;

use crate::deliver::attempt::{self, Deliverer};
use crate::log;
use crate::queue::Envelope;
use crate::scan::Verdict;
use crate::smtp::reply::{Enhanced, Reply};

pub struct EarlyDelivery {
    deliverer: Rc<Deliverer>,
    wait: Duration,
}

impl EarlyDelivery {
    /// None when `early_ms` is 0 (early delivery off).
    pub fn new(deliverer: Rc<Deliverer>, early_ms: u32) -> Option<EarlyDelivery> {
        (early_ms > 0).then(|| EarlyDelivery {
            deliverer,
            wait: Duration::from_millis(u64::from(early_ms)),
        })
    }

    pub async fn run(&self, env: &mut Envelope) -> Verdict {
        // A recipient that asked for a success report (NOTIFY=SUCCESS) is
        // left to the delivery engine, which sends the report.
        let success_wanted = env.recipients.iter().any(|r| r.dsn.wants(crate::smtp::dsn::Notify::SUCCESS));
        if success_wanted || !self.deliverer.all_by_smtp(env) {
            return Verdict::Continue;
        }
        let offered = self.deliverer.deliver_pending(env);
        let Ok(results) = glommio::timer::timeout(self.wait, async { Ok(offered.await) }).await
        else {
            return Verdict::Continue;
        };
        // attempt_count stays 0: a committed envelope goes into the head log
        // as a new one, with the early deliveries among its recipients'
        // states. A refusal is left pending, for the normal attempt to meet
        // again and report.
        let delivered = attempt::record(self.deliverer.shard_index(), env, results, true);
        log::written().await;
        if delivered < env.recipients.len() {
            return Verdict::Continue;
        }
        let to: Vec<String> = env
            .recipients
            .iter()
            .map(|r| r.address.to_string())
            .collect();
        log::event(
            "relayed_early",
            &[
                ("id", &env.id),
                ("client", &env.client),
                ("from", &env.sender),
                ("to", &to.join(",")),
                ("size", &env.size_bytes),
            ],
        );
        Verdict::Done(Reply::new(
            250,
            Enhanced(2, 0, 0),
            format!("Ok: delivered as {}", env.id),
        ))
    }
}
