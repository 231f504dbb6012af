//! Device time of queued work, measured with ACL events recorded on the backend's stream
//! (`aclrtRecordEvent` before and after, `aclrtEventElapsedTime` between): the time the
//! device spent, not the host's time to queue it.

use std::sync::Arc;

use ascend_sys::types::aclrtEvent;
use qwen3_backend::Result;

use crate::mem::{dev_err, Device};
use crate::AscendBackend;

/// One event of the device's stream, destroyed on drop. Plain `aclrtCreateEvent` events time
/// (the ACL docs, 6.0.1 to 8.x: "can be used to compute the elapsed time between two events,
/// synchronize streams"); `ACL_EVENT_TIME_LINE` ones would only time.
struct Event {
    dev: Arc<Device>,
    raw: aclrtEvent,
}

impl Event {
    fn recorded(dev: &Arc<Device>) -> Result<Self> {
        dev.bind()?;
        let acl = &dev.cann.acl;
        let mut raw: aclrtEvent = std::ptr::null_mut();
        // SAFETY: `raw` is a valid out-pointer; the device's context is bound.
        let rc = unsafe { (acl.aclrtCreateEvent)(&mut raw) };
        dev.cann.check(rc, "aclrtCreateEvent").map_err(dev_err)?;
        let e = Self {
            dev: Arc::clone(dev),
            raw,
        };
        // SAFETY: the event and the stream are alive.
        let rc = unsafe { (acl.aclrtRecordEvent)(e.raw, dev.stream.0) };
        dev.cann.check(rc, "aclrtRecordEvent").map_err(dev_err)?;
        Ok(e)
    }
}

impl Drop for Event {
    fn drop(&mut self) {
        if self.dev.bind().is_ok() {
            // SAFETY: created by aclrtCreateEvent and destroyed once, here.
            unsafe { (self.dev.cann.acl.aclrtDestroyEvent)(self.raw) };
        }
    }
}

/// Spans of the stream between `start` and `stop`, summed by [`DeviceTimer::total_us`].
pub struct DeviceTimer {
    dev: Arc<Device>,
    open: Option<Event>,
    spans: Vec<(Event, Event)>,
}

impl DeviceTimer {
    pub fn new(backend: &AscendBackend) -> Self {
        Self {
            dev: Arc::clone(backend.device()),
            open: None,
            spans: Vec::new(),
        }
    }

    /// Marks the start of a span: work queued from now on is timed.
    pub fn start(&mut self) -> Result<()> {
        self.open = Some(Event::recorded(&self.dev)?);
        Ok(())
    }

    /// Ends the span `start` opened (a `stop` without a `start` is ignored).
    pub fn stop(&mut self) -> Result<()> {
        if let Some(start) = self.open.take() {
            let end = Event::recorded(&self.dev)?;
            self.spans.push((start, end));
        }
        Ok(())
    }

    /// Waits for the last span's end and returns the device time of all spans, in µs
    /// (`None`: nothing was timed).
    pub fn total_us(&self) -> Result<Option<f64>> {
        let Some((_, last)) = self.spans.last() else {
            return Ok(None);
        };
        self.dev.bind()?;
        let cann = &self.dev.cann;
        // The docs ask for the stream's work to be done before aclrtEventElapsedTime: the
        // last end event is, and the stream runs in order, so every span before it too.
        // SAFETY: the event is alive; the stream it was recorded on too.
        let rc = unsafe { (cann.acl.aclrtSynchronizeEvent)(last.raw) };
        cann.check(rc, "aclrtSynchronizeEvent").map_err(dev_err)?;
        let mut total = 0.0;
        for (a, b) in &self.spans {
            let mut ms = 0f32;
            // SAFETY: both events were recorded on this stream, which has passed them.
            let rc = unsafe { (cann.acl.aclrtEventElapsedTime)(&mut ms, a.raw, b.raw) };
            cann.check(rc, "aclrtEventElapsedTime").map_err(dev_err)?;
            total += f64::from(ms) * 1000.0;
        }
        Ok(Some(total))
    }
}
