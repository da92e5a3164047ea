/* Keyflow browser tracking. keyflow.init("ck_live_…", {host}); keyflow.track(name, props);
   keyflow.identify(emailOrExternalId, props); keyflow.flush(). Events are batched and sent
   with fetch; on page hide the queue is flushed with keepalive so it survives navigation. */
(function (w, d) {
  "use strict";
  var MAX_BATCH = 100;
  var s = { key: null, host: "", queue: [], who: {}, timer: null, anon: null };

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

  function flush(keepalive) {
    if (s.timer) { w.clearTimeout(s.timer); s.timer = null; }
    var sends = [];
    while (s.key && s.queue.length > 0) {
      var events = s.queue.splice(0, MAX_BATCH);
      sends.push(post("/v1/events/batch", { events: events }, keepalive).then(function (r) {
        return r.ok;
      }, function () {
        // Network failure: keep the events for the next flush (their
        // idempotency keys make a retry safe).
        s.queue = events.concat(s.queue);
        return false;
      }));
    }
    return Promise.all(sends);
  }

  function schedule() {
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
    flush: function () { return flush(false); }
  };

  d.addEventListener("visibilitychange", function () {
    if (d.visibilityState === "hidden") { flush(true); }
  });
  w.addEventListener("pagehide", function () { flush(true); });
})(window, document);
