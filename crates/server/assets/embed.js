/* Keyflow browser tracking. keyflow.init("ck_live_…", {host}); keyflow.track(name, props);
   keyflow.identify(emailOrExternalId, props); keyflow.flush(); keyflow.queued().
   Events are batched and sent with fetch. When the API cannot take them (429, 5xx, network
   down) they stay queued (at most 1000; the oldest go first) and are sent again after the
   answer's Retry-After, or after a backoff doubling from 1 s to 60 s; their idempotency keys
   make a repeat harmless. On page hide the queue is sent with keepalive so it survives
   navigation (sendBeacon cannot carry the Authorization header). */
(function (w, d) {
  "use strict";
  var MAX_BATCH = 100;            // events per request
  var MAX_BATCH_BYTES = 512000;   // well under the API's 1 MiB body limit
  var KEEPALIVE_BYTES = 60000;    // browsers allow 64 KiB of keepalive bodies in flight
  var MAX_QUEUE = 1000;           // events kept while the API cannot take them
  var MAX_BACKOFF_MS = 60000;
  var s = {
    key: null, host: "", queue: [], who: {}, timer: null, anon: null,
    failures: 0, retryAt: 0, inflight: null, warned: {}
  };

  function uuid() {
    if (w.crypto && w.crypto.randomUUID) { return w.crypto.randomUUID(); }
    return "xxxxxxxxxxxx4xxxyxxxxxxxxxxxxxxx".replace(/[xy]/g, function (c) {
      var r = Math.random() * 16 | 0;
      return (c === "x" ? r : (r & 3 | 8)).toString(16);
    });
  }

  function anonymousId() {
    if (s.anon) { return s.anon; }
    try {
      s.anon = w.localStorage.getItem("keyflow_anonymous_id");
      if (!s.anon) { s.anon = uuid(); w.localStorage.setItem("keyflow_anonymous_id", s.anon); }
    } catch (e) { s.anon = uuid(); }
    return s.anon;
  }

  function post(path, body, keepalive) {
    return w.fetch(s.host + path, {
      method: "POST",
      keepalive: !!keepalive,
      headers: { "Authorization": "Bearer " + s.key, "Content-Type": "application/json" },
      body: JSON.stringify(body)
    });
  }

  // Keeps the newest MAX_QUEUE events: a page that cannot reach the API for long
  // loses its oldest events rather than all of its memory.
  function bound() {
    var over = s.queue.length - MAX_QUEUE;
    if (over > 0) { s.queue.splice(0, over); }
  }

  // Empties the queue into batches of at most MAX_BATCH events and about `bytes` bytes.
  function take(bytes) {
    var batches = [], batch = [], size = 0;
    while (s.queue.length > 0) {
      var n = JSON.stringify(s.queue[0]).length + 1;
      if (batch.length > 0 && (batch.length >= MAX_BATCH || size + n > bytes)) {
        batches.push(batch); batch = []; size = 0;
      }
      batch.push(s.queue.shift()); size += n;
    }
    if (batch.length > 0) { batches.push(batch); }
    return batches;
  }

  // How long to wait after a failure: the answer's Retry-After when it has one, else a
  // backoff doubling from 1 s to 60 s, jittered so clients that failed together spread out.
  function delay(response) {
    s.failures += 1;
    var after = response ? Number(response.headers.get("Retry-After")) : NaN;
    if (after > 0) { return after * 1000 + Math.random() * 250; }
    var backoff = Math.min(MAX_BACKOFF_MS, 1000 * Math.pow(2, s.failures - 1));
    return backoff / 2 + Math.random() * backoff / 2;
  }

  function retryIn(ms) {
    if (s.timer) { w.clearTimeout(s.timer); }
    s.retryAt = Date.now() + ms;
    s.timer = w.setTimeout(function () { s.timer = null; s.retryAt = 0; flush(false); }, ms);
  }

  function warnOnce(status) {
    if (s.warned[status] || !w.console) { return; }
    s.warned[status] = true;
    w.console.warn("keyflow: the API refused events with HTTP " + status + "; they were dropped");
  }

  // Sends one batch; true when stored. A refusal that a retry cannot change (400, 401,
  // 403, 413, 422) drops the batch; 429, 5xx and network failures put it back in front.
  function send(events, keepalive) {
    return post("/v1/events/batch", { events: events }, keepalive).then(function (r) {
      if (r.ok) { s.failures = 0; return { ok: true }; }
      if (r.status === 429 || r.status >= 500) { return { ok: false, events: events, response: r }; }
      warnOnce(r.status);
      return { ok: false };
    }, function () {
      return { ok: false, events: events, response: null };
    });
  }

  // Sends the queue. One flush at a time (page hide excepted): a flush asked for while
  // another is under way runs after it, so a failure is counted once, not once per batch.
  function flush(keepalive) {
    if (!keepalive && s.inflight) { return s.inflight.then(function () { return flush(false); }); }
    // While waiting out a failure only page hide sends (its last chance).
    if (!keepalive && s.retryAt > Date.now()) { return Promise.resolve([]); }
    if (s.timer) { w.clearTimeout(s.timer); s.timer = null; s.retryAt = 0; }
    if (!s.key) { return Promise.resolve([]); }
    // On page hide the first batch goes with keepalive (the browser's 64 KiB allowance);
    // any others are sent plainly and may not outlive the page.
    var batches = take(keepalive ? KEEPALIVE_BYTES : MAX_BATCH_BYTES);
    if (!keepalive && s.failures > 0 && batches.length > 1) {
      // Recovering from a failure: one batch first, the rest once it is through.
      s.queue = [].concat.apply([], batches.slice(1)).concat(s.queue);
      batches = batches.slice(0, 1);
    }
    var sent = Promise.all(batches.map(function (b, i) { return send(b, keepalive && i === 0); })).then(function (results) {
      var failed = [], response = null, retry = false;
      results.forEach(function (r) {
        if (r.events) { failed = failed.concat(r.events); retry = true; response = response || r.response; }
      });
      if (retry) {
        s.queue = failed.concat(s.queue);
        bound();
        retryIn(delay(response));
      }
      if (!keepalive) { s.inflight = null; }
      if (!retry && s.queue.length > 0) { schedule(); }
      return results.map(function (r) { return r.ok; });
    });
    if (!keepalive) { s.inflight = sent; }
    return sent;
  }

  function schedule() {
    // The retry timer, or the flush under way, sends them.
    if (s.retryAt > Date.now() || s.inflight) { return; }
    if (s.queue.length >= MAX_BATCH) { flush(false); return; }
    if (!s.timer) { s.timer = w.setTimeout(function () { s.timer = null; flush(false); }, 1000); }
  }

  w.keyflow = {
    init: function (key, options) {
      s.key = key;
      s.host = String((options && options.host) || "").replace(/\/+$/, "");
    },
    track: function (name, properties) {
      var e = {
        name: String(name),
        properties: properties || {},
        timestamp: new Date().toISOString(),
        anonymous_id: anonymousId(),
        idempotency_key: uuid()
      };
      if (s.who.email) { e.email = s.who.email; }
      if (s.who.external_id) { e.external_id = s.who.external_id; }
      s.queue.push(e);
      bound();
      schedule();
    },
    identify: function (who, properties) {
      who = String(who);
      s.who = who.indexOf("@") > 0 ? { email: who } : { external_id: who };
      var body = { properties: properties || {} };
      if (s.who.email) { body.email = s.who.email; } else { body.external_id = s.who.external_id; }
      // Needs contacts:write on the client key; without it later events still carry the identity.
      return post("/v1/contacts", body, false).then(function (r) { return r.ok; }, function () { return false; });
    },
    flush: function () { return flush(false); },
    queued: function () { return s.queue.length; }
  };

  d.addEventListener("visibilitychange", function () {
    if (d.visibilityState === "hidden") { flush(true); }
  });
  w.addEventListener("pagehide", function () { flush(true); });
})(window, document);
