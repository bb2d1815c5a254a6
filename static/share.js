/*
 * The share page: where the recipient of a tracking link sees their driver coming.
 *
 * 1. Read the page's settings (the server's JSON data block) and the share
 *    token (the last segment of this page's path).
 * 2. GET {api_prefix}/share/{token}: the full public view (driver, destination,
 *    ETA, trail, names, notes). 404 is "unknown or expired link", 410 an ended
 *    session (delivered / cancelled), 429 "too many requests" (retried after
 *    Retry-After).
 * 3. Follow the live WebSocket {api_prefix}/share/{token}/live: position
 *    messages move the marker, session_ended shows the end state, pings are
 *    answered with pongs. A lost connection is retried with exponential
 *    back-off (1 s doubling to 60 s, with jitter); while it is down the page
 *    polls the GET every poll_interval_seconds, so updates keep arriving when
 *    WebSockets are blocked (proxies, captive portals).
 *
 * No inline script or style anywhere (the page's CSP forbids both): every
 * style change goes through classes or the CSSOM, and every text through
 * textContent, never innerHTML.
 */
(function () {
  "use strict";

  var BACKOFF_FIRST_MS = 1000;
  var BACKOFF_MAX_MS = 60000;
  var HEALTHY_CONNECTION_MS = 15000; // a connection that lasted this long resets the back-off
  var FULL_REFRESH_MS = 120000; // while live, re-read the view for notes or destination changes
  var STALE_AFTER_S = 120;
  var TRAIL_MAX_POINTS = 1000; // as many as the server sends
  var OWN_MOVE_MS = 1000; // a zoom starting this soon after the page moved the map is the page's

  var pages = window.trackerPages;
  var setText = pages.setText;
  var agoText = pages.agoText;
  var config = pages.readConfig("share-config", {
    api_prefix: "/api/v1",
    tile_url: "",
    tile_attribution: "",
    poll_interval_seconds: 5,
    ping_interval_seconds: 25,
  });
  var token = shareToken();
  var apiUrl = config.api_prefix + "/share/" + encodeURIComponent(token);
  var liveUrl =
    (location.protocol === "https:" ? "wss://" : "ws://") + location.host + apiUrl + "/live";
  var pollIntervalMs = Math.max(1, Number(config.poll_interval_seconds) || 5) * 1000;
  var silenceLimitMs = 2.5 * Math.max(1, Number(config.ping_interval_seconds) || 25) * 1000;

  var view = null; // the public view, kept up to date by live messages and polls
  var ended = false;
  var clockOffsetMs = 0; // server clock minus this device's clock, from the Date header
  var arrivalAtMs = null;

  var socket = null;
  var socketLive = false;
  var liveAttempts = 0;
  var reconnectTimer = null;
  var polling = false;
  var pollRound = 0;
  var pollTimer = null;
  var watchdogTimer = null;
  var refreshTimer = null;
  var retryTimer = null;
  var lastHeardMs = 0;

  var map = null;
  var driverMarker = null;
  var driverElement = null;
  var destinationMarker = null;
  var destinationLabel = null;
  var trailLine = null;
  var following = true;
  var movedMapAt = 0;

  function $(id) {
    return document.getElementById(id);
  }

  function shareToken() {
    var segments = location.pathname.split("/").filter(Boolean);
    var last = segments.length ? segments[segments.length - 1] : "";
    try {
      return decodeURIComponent(last);
    } catch (error) {
      return last;
    }
  }

  function nowMs() {
    return Date.now() + clockOffsetMs;
  }

  // -- text ------------------------------------------------------------------

  function showRow(rowId, valueId, value) {
    var present = value !== null && value !== undefined && String(value).trim() !== "";
    $(rowId).hidden = !present;
    setText(valueId, present ? String(value) : "");
  }

  function etaText(seconds) {
    if (seconds <= 0) {
      return "arriving now";
    }
    var minutes = Math.max(1, Math.round(seconds / 60));
    if (minutes < 60) {
      return "about " + minutes + " min";
    }
    var hours = Math.floor(minutes / 60);
    var rest = minutes % 60;
    return "about " + hours + " h" + (rest ? " " + rest + " min" : "");
  }

  function clockTime(ms) {
    return new Date(ms).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
  }

  function tick() {
    if (!view || ended) {
      return;
    }
    if (view.last_updated) {
      var seconds = Math.max(0, nowMs() / 1000 - view.last_updated);
      setText("last-updated", "last updated " + agoText(seconds));
      $("last-updated").classList.toggle("stale", seconds > STALE_AFTER_S);
    } else {
      setText("last-updated", "");
    }
  }

  function setConnection(mode) {
    document.body.dataset.connection = mode;
    var labels = {
      connecting: "Connecting…",
      live: "Live",
      polling: "Updating every " + Math.round(pollIntervalMs / 1000) + " s",
      offline: "Offline, retrying…",
    };
    setText("connection", labels[mode] || "");
  }

  function showBanner(text) {
    $("banner").hidden = !text;
    setText("banner", text || "");
  }

  // -- the states the page can be in ------------------------------------------

  // Line icons drawn in SVG: emoji and symbol glyphs are missing from many fonts.
  var ICONS = {
    check: ["M5 12.5l4.5 4.5L19 7.5"],
    cross: ["M6.5 6.5l11 11M17.5 6.5l-11 11"],
    clock: ["M12 3a9 9 0 1 0 0 18 9 9 0 0 0 0-18Z", "M12 7.5V12l3 2"],
    hourglass: [
      "M7 3h10M7 21h10",
      "M8 3v3a4 4 0 0 0 1.8 3.3L12 11l2.2-1.7A4 4 0 0 0 16 6V3",
      "M8 21v-3a4 4 0 0 1 1.8-3.3L12 13l2.2 1.7A4 4 0 0 1 16 18v3",
    ],
    question: ["M9 9a3 3 0 1 1 4.3 2.7c-.8.4-1.3 1.1-1.3 2V14.5", "M12 18.2v.3"],
    alert: ["M12 6.5v7.5", "M12 18.2v.3"],
  };

  function setIcon(name) {
    var holder = $("state-icon");
    while (holder.firstChild) {
      holder.removeChild(holder.firstChild);
    }
    if (!ICONS[name]) {
      return;
    }
    var drawing = svgElement("svg", { viewBox: "0 0 24 24", "aria-hidden": "true" });
    ICONS[name].forEach(function (d) {
      drawing.appendChild(svgElement("path", { d: d }));
    });
    holder.appendChild(drawing);
  }

  function showCard(state, icon, title, message) {
    document.body.dataset.state = state;
    $("state-card").hidden = false;
    $("details").hidden = true;
    $("map-area").hidden = true;
    setIcon(icon);
    setText("state-title", title);
    setText("state-message", message);
    var order = view && view.order_id ? "Order " + view.order_id : "";
    $("state-order").hidden = !order;
    setText("state-order", order);
    document.title = title;
  }

  function showEnded(reason) {
    var endings = {
      completed: ["ended", "check", "Delivered", "Your delivery is complete. Thank you!"],
      arrived: ["ended", "check", "Delivered", "Your driver has arrived and the delivery is complete."],
      cancelled: [
        "ended",
        "cross",
        "Delivery cancelled",
        "This delivery was cancelled, so tracking has stopped. Contact the sender if you have questions.",
      ],
      expired: [
        "ended",
        "clock",
        "Tracking link expired",
        "This tracking link has expired. Contact the sender if you are still waiting.",
      ],
    };
    var ending = endings[reason] || endings.completed;
    stopEverything();
    document.body.dataset.reason = reason in endings ? reason : "completed";
    showCard(ending[0], ending[1], ending[2], ending[3]);
  }

  function showUnknown() {
    var wasActive = view !== null;
    stopEverything();
    if (wasActive) {
      document.body.dataset.reason = "expired";
      showCard(
        "ended",
        "clock",
        "Tracking link expired",
        "This tracking link has expired. Contact the sender if you are still waiting."
      );
    } else {
      showCard(
        "unknown",
        "question",
        "Link not found",
        "This tracking link is invalid or has expired. Check the link you were sent, or contact the sender."
      );
    }
  }

  function countdown(state, icon, title, messageFor, seconds, then) {
    var left = Math.max(1, Math.ceil(seconds));
    clearTimeout(retryTimer);
    function step() {
      if (left <= 0) {
        then();
        return;
      }
      showCard(state, icon, title, messageFor(left));
      left -= 1;
      retryTimer = setTimeout(step, 1000);
    }
    step();
  }

  function stopEverything() {
    ended = true;
    clearTimeout(reconnectTimer);
    clearTimeout(pollTimer);
    clearTimeout(retryTimer);
    clearInterval(watchdogTimer);
    clearInterval(refreshTimer);
    if (socket) {
      var closing = socket;
      socket = null;
      socketLive = false;
      closing.onclose = null;
      closing.onmessage = null;
      closing.close(1000);
    }
  }

  // -- the view ------------------------------------------------------------------

  function applyView(next) {
    next.trail = Array.isArray(next.trail) ? next.trail.slice() : [];
    if (view && view.driver && (next.last_updated || 0) < (view.last_updated || 0)) {
      // A poll answered after a newer live position: keep the newer position.
      next.driver = view.driver;
      next.last_updated = view.last_updated;
      next.trail = view.trail;
      if ("eta_seconds" in next) {
        next.eta_seconds = view.eta_seconds;
      }
    }
    view = next;
    if (view.driver) {
      appendTrail(view.driver.latitude, view.driver.longitude);
    }
    arrivalAtMs = typeof view.eta_seconds === "number" ? nowMs() + view.eta_seconds * 1000 : null;
    render();
  }

  function applyPosition(message) {
    if (!view) {
      return;
    }
    if (view.last_updated && message.timestamp < view.last_updated) {
      return; // an older fix than the one shown
    }
    var driver = { latitude: message.latitude, longitude: message.longitude };
    if ("heading" in message) {
      driver.heading = message.heading;
    }
    if ("speed" in message) {
      driver.speed = message.speed;
    }
    view.driver = driver;
    view.last_updated = message.timestamp;
    if (message.driver_display_name) {
      view.driver_display_name = message.driver_display_name;
    }
    if ("eta_seconds" in message) {
      view.eta_seconds = message.eta_seconds;
      arrivalAtMs =
        typeof message.eta_seconds === "number" ? nowMs() + message.eta_seconds * 1000 : null;
    }
    appendTrail(message.latitude, message.longitude);
    render();
  }

  function appendTrail(latitude, longitude) {
    var last = view.trail[view.trail.length - 1];
    if (!last || last[0] !== latitude || last[1] !== longitude) {
      view.trail.push([latitude, longitude]);
      if (view.trail.length > TRAIL_MAX_POINTS) {
        view.trail.shift();
      }
    }
  }

  function render() {
    document.body.dataset.state = "active";
    $("state-card").hidden = true;
    $("details").hidden = false;

    var name = view.driver_display_name || "";
    var hasEta = typeof view.eta_seconds === "number";
    $("eta-block").hidden = !hasEta;
    if (hasEta) {
      setText("eta", etaText(view.eta_seconds));
      setText(
        "arrival",
        view.eta_seconds > 0 && arrivalAtMs ? "Arriving around " + clockTime(arrivalAtMs) : ""
      );
    }
    var status;
    if (!view.driver) {
      status = "Waiting for the driver's location…";
    } else if (hasEta && view.eta_seconds <= 0) {
      status = (name || "Your driver") + " is arriving";
    } else {
      status = (name || "Your driver") + " is on the way";
    }
    setText("status-line", status);
    document.title = hasEta ? "Arriving " + etaText(view.eta_seconds) : "Track your delivery";

    showRow("row-recipient", "recipient-name", view.recipient_name);
    showRow("row-order", "order-id", view.order_id);
    var destination = view.destination || null;
    showRow("row-destination", "destination-label", destination && destination.label);
    $("notes").hidden = !view.notes;
    setText("notes", view.notes || "");
    tick();
    renderMap();
  }

  // -- the map ---------------------------------------------------------------------

  function ensureMap(center) {
    if (map || typeof L === "undefined") {
      return map;
    }
    $("map-area").hidden = false;
    map = L.map("map", { zoomControl: true, attributionControl: true });
    map.setView(center, 15);
    pages.addTiles(map, config);
    map.on("dragstart", function () {
      setFollowing(false);
    });
    map.on("zoomstart", function () {
      if (Date.now() - movedMapAt > OWN_MOVE_MS) {
        setFollowing(false); // the recipient zoomed: stop following until they re-centre
      }
    });
    $("recenter").addEventListener("click", function () {
      setFollowing(true);
      frame(true);
    });
    return map;
  }

  function setFollowing(value) {
    following = value;
    $("recenter").hidden = value;
  }

  var SVG = "http://www.w3.org/2000/svg";

  function svgElement(name, attributes) {
    var element = document.createElementNS(SVG, name);
    Object.keys(attributes).forEach(function (key) {
      element.setAttribute(key, attributes[key]);
    });
    return element;
  }

  // The driver: an arrow that turns with the heading, or a dot without one.
  function driverIcon() {
    driverElement = document.createElement("div");
    driverElement.className = "driver";
    driverElement.id = "driver-marker";
    var drawing = svgElement("svg", { viewBox: "0 0 24 24", "aria-hidden": "true" });
    var paint = { fill: "#1a5fd0", stroke: "#fff", "stroke-width": "2.2" };
    var arrow = svgElement("path", { d: "M12 1.5 20.5 21.5 12 17 3.5 21.5Z", class: "driver-arrow" });
    var dot = svgElement("circle", { cx: "12", cy: "12", r: "8", class: "driver-dot" });
    [arrow, dot].forEach(function (shape) {
      Object.keys(paint).forEach(function (key) {
        shape.setAttribute(key, paint[key]);
      });
      shape.setAttribute("stroke-linejoin", "round");
      drawing.appendChild(shape);
    });
    driverElement.appendChild(drawing);
    return L.divIcon({
      className: "driver-icon",
      html: driverElement,
      iconSize: [44, 44],
      iconAnchor: [22, 22],
    });
  }

  function destinationIcon() {
    var pin = document.createElement("div");
    pin.className = "destination";
    pin.id = "destination-marker";
    var drawing = svgElement("svg", { viewBox: "0 0 30 40", "aria-hidden": "true" });
    drawing.appendChild(
      svgElement("path", {
        d: "M15 1.5C7.5 1.5 1.5 7.4 1.5 14.7 1.5 24.6 15 38.5 15 38.5S28.5 24.6 28.5 14.7C28.5 7.4 22.5 1.5 15 1.5Z",
        fill: "#d93025",
        stroke: "#fff",
        "stroke-width": "2",
      })
    );
    drawing.appendChild(svgElement("circle", { cx: "15", cy: "14.5", r: "5", fill: "#fff" }));
    pin.appendChild(drawing);
    return L.divIcon({
      className: "destination-icon",
      html: pin,
      iconSize: [30, 40],
      iconAnchor: [15, 39],
      tooltipAnchor: [0, -36],
    });
  }

  function renderMap() {
    var driver = view.driver;
    var destination = view.destination || null;
    var anchor = driver
      ? [driver.latitude, driver.longitude]
      : destination
        ? [destination.latitude, destination.longitude]
        : null;
    if (!anchor) {
      $("map-area").hidden = true; // nothing to show yet: no empty map
      return;
    }
    var first = !map;
    if (!ensureMap(anchor)) {
      return; // Leaflet did not load: the text still tells everything
    }
    $("map-area").hidden = false;
    if (first) {
      map.invalidateSize();
    }

    if (destination) {
      var target = [destination.latitude, destination.longitude];
      if (!destinationMarker) {
        destinationMarker = L.marker(target, {
          icon: destinationIcon(),
          keyboard: false,
          interactive: false,
          zIndexOffset: -100,
        }).addTo(map);
      } else {
        destinationMarker.setLatLng(target);
      }
      var pin = $("destination-marker");
      pin.dataset.lat = String(destination.latitude);
      pin.dataset.lng = String(destination.longitude);
      if (!destination.label) {
        destinationMarker.unbindTooltip();
        destinationLabel = null;
      } else if (!destinationLabel) {
        destinationLabel = document.createElement("span");
        destinationLabel.textContent = destination.label;
        destinationMarker.bindTooltip(destinationLabel, {
          permanent: true,
          direction: "top",
          className: "destination-label",
        });
      } else {
        destinationLabel.textContent = destination.label;
      }
    } else if (destinationMarker) {
      destinationMarker.remove();
      destinationMarker = null;
      destinationLabel = null;
    }

    if (view.trail.length > 1) {
      if (!trailLine) {
        trailLine = L.polyline(view.trail, {
          color: "#1a5fd0",
          weight: 4,
          opacity: 0.6,
          interactive: false,
        }).addTo(map);
      } else {
        trailLine.setLatLngs(view.trail);
      }
    }
    $("map").dataset.trailPoints = String(view.trail.length);

    if (driver) {
      var position = [driver.latitude, driver.longitude];
      if (!driverMarker) {
        driverMarker = L.marker(position, {
          icon: driverIcon(),
          keyboard: false,
          interactive: false,
          zIndexOffset: 1000,
        }).addTo(map);
      } else {
        driverMarker.setLatLng(position);
      }
      var heading = typeof driver.heading === "number" ? driver.heading : null;
      driverElement.dataset.lat = String(driver.latitude);
      driverElement.dataset.lng = String(driver.longitude);
      driverElement.classList.toggle("has-heading", heading !== null);
      if (heading !== null) {
        driverElement.dataset.heading = String(heading);
        driverElement.style.transform = "rotate(" + heading + "deg)";
      } else {
        delete driverElement.dataset.heading;
        driverElement.style.transform = "";
      }
    } else if (driverMarker) {
      driverMarker.remove();
      driverMarker = null;
    }
    frame(first);
  }

  // Keep the driver (and the destination) in view, unless the recipient moved the map.
  function frame(force) {
    if (!map || (!following && !force)) {
      return;
    }
    var points = [];
    if (view.driver) {
      points.push([view.driver.latitude, view.driver.longitude]);
    }
    if (view.destination) {
      points.push([view.destination.latitude, view.destination.longitude]);
    }
    if (!points.length) {
      return;
    }
    var inView = points.every(function (point) {
      return map.getBounds().pad(-0.1).contains(point);
    });
    if (inView && !force) {
      return;
    }
    movedMapAt = Date.now();
    if (points.length === 1) {
      map.setView(points[0], Math.max(map.getZoom() || 15, 14), { animate: !force });
    } else {
      // Room above the pin for its label, and beside it for the label's width.
      map.fitBounds(L.latLngBounds(points), {
        paddingTopLeft: [85, 95],
        paddingBottomRight: [85, 40],
        maxZoom: 16,
        animate: !force,
      });
    }
  }

  // -- the public API ---------------------------------------------------------------

  function retryAfterSeconds(response) {
    var value = Number(response.headers.get("Retry-After"));
    return value > 0 ? value : 30;
  }

  async function fetchView() {
    var response;
    try {
      response = await fetch(apiUrl, {
        cache: "no-store",
        credentials: "omit",
        headers: { Accept: "application/json" },
      });
    } catch (error) {
      return { kind: "unreachable" };
    }
    var date = Date.parse(response.headers.get("Date") || "");
    if (!isNaN(date)) {
      clockOffsetMs = date + 500 - Date.now(); // Date has whole seconds: aim at the middle
    }
    var body = null;
    try {
      body = await response.json();
    } catch (error) {
      body = null;
    }
    if (response.ok && body) {
      return { kind: "view", view: body };
    }
    if (response.status === 404) {
      return { kind: "unknown" };
    }
    if (response.status === 410) {
      var details = (body && body.error && body.error.details) || {};
      return { kind: "ended", reason: details.reason || details.status || "completed" };
    }
    if (response.status === 429) {
      return { kind: "rate-limited", seconds: retryAfterSeconds(response) };
    }
    return { kind: "unreachable" };
  }

  // One GET, applied. Answers what happened and the seconds to wait before the
  // next try (0: all is well); `done` when the page reached an end state.
  async function refresh() {
    var result = await fetchView();
    if (ended) {
      return { done: true };
    }
    switch (result.kind) {
      case "view":
        showBanner("");
        applyView(result.view);
        return { kind: "view", wait: 0 };
      case "ended":
        showEnded(result.reason);
        return { done: true };
      case "unknown":
        showUnknown();
        return { done: true };
      case "rate-limited":
        if (view) {
          showBanner("Too many requests: updating again in " + result.seconds + " s.");
        }
        return { kind: "rate-limited", wait: result.seconds };
      default:
        if (view && !socketLive) {
          showBanner("Connection lost. Trying again…");
          setConnection("offline");
        }
        return { kind: "unreachable", wait: pollIntervalMs / 1000 };
    }
  }

  async function start() {
    var result = await refresh();
    if (result.done) {
      return;
    }
    if (view) {
      connectLive();
      clearInterval(refreshTimer);
      refreshTimer = setInterval(function () {
        if (socketLive) {
          refresh();
        }
      }, FULL_REFRESH_MS);
      return;
    }
    if (result.kind === "rate-limited") {
      countdown(
        "rate-limited",
        "hourglass",
        "Too many requests",
        function (left) {
          return "Too many requests from your network. This page will try again in " + left + " s.";
        },
        result.wait,
        start
      );
    } else {
      countdown(
        "offline",
        "alert",
        "Can't reach the tracking service",
        function (left) {
          return "Check your connection. Trying again in " + left + " s.";
        },
        result.wait,
        start
      );
    }
  }

  // -- polling (the fallback) ---------------------------------------------------------

  function startPolling() {
    if (ended || polling) {
      return;
    }
    polling = true;
    setConnection("polling");
    pollTimer = setTimeout(poll, pollIntervalMs);
  }

  function stopPolling() {
    polling = false;
    pollRound += 1; // a poll still in flight finds its round over and stops
    clearTimeout(pollTimer);
    pollTimer = null;
  }

  async function poll() {
    var round = pollRound;
    var result = await refresh();
    if (round !== pollRound || result.done || ended || !polling) {
      return;
    }
    if (result.kind === "view") {
      setConnection("polling");
    }
    pollTimer = setTimeout(poll, Math.max(pollIntervalMs, result.wait * 1000));
  }

  // -- the live WebSocket ----------------------------------------------------------------

  function connectLive() {
    if (ended || socket || typeof WebSocket === "undefined") {
      if (typeof WebSocket === "undefined") {
        startPolling();
      }
      return;
    }
    clearTimeout(reconnectTimer);
    reconnectTimer = null;
    var opened = 0;
    var heard = false;
    var current;
    try {
      current = new WebSocket(liveUrl);
    } catch (error) {
      liveLost(false);
      return;
    }
    socket = current;
    current.onopen = function () {
      opened = Date.now();
      lastHeardMs = opened;
      socketLive = true;
      stopPolling();
      showBanner("");
      setConnection("live");
      clearInterval(watchdogTimer);
      watchdogTimer = setInterval(function () {
        if (Date.now() - lastHeardMs > silenceLimitMs) {
          dropSocket(current); // silent for too long: the connection is dead
          liveLost(true);
        }
      }, 5000);
    };
    current.onmessage = function (event) {
      lastHeardMs = Date.now();
      heard = true;
      var message;
      try {
        message = JSON.parse(event.data);
      } catch (error) {
        return;
      }
      handleLive(current, message);
    };
    current.onerror = function () {
      // onclose follows with the details
    };
    current.onclose = function (event) {
      if (socket !== current) {
        return;
      }
      dropSocket(current);
      if (ended) {
        return;
      }
      if (event.code === 4001) {
        refresh().then(function (result) {
          if (!result.done) {
            liveLost(false);
          }
        });
        return;
      }
      var healthy = heard || (opened && Date.now() - opened >= HEALTHY_CONNECTION_MS);
      liveLost(healthy);
    };
  }

  function handleLive(current, message) {
    if (!message || typeof message !== "object") {
      return;
    }
    if (message.type === "position") {
      applyPosition(message);
    } else if (message.type === "session_ended") {
      showEnded(message.reason);
    } else if (message.type === "ping") {
      if (current.readyState === WebSocket.OPEN) {
        current.send(JSON.stringify({ type: "pong" }));
      }
    }
  }

  function dropSocket(current) {
    clearInterval(watchdogTimer);
    if (socket === current) {
      socket = null;
      socketLive = false;
    }
    current.onopen = current.onmessage = current.onclose = current.onerror = null;
    if (current.readyState === WebSocket.OPEN || current.readyState === WebSocket.CONNECTING) {
      current.close();
    }
  }

  // The live connection failed or dropped: poll meanwhile, and try again after a back-off.
  function liveLost(wasHealthy) {
    if (ended) {
      return;
    }
    liveAttempts = wasHealthy ? 1 : liveAttempts + 1;
    var delay = Math.min(BACKOFF_MAX_MS, BACKOFF_FIRST_MS * Math.pow(2, liveAttempts - 1));
    delay = delay / 2 + Math.random() * (delay / 2);
    startPolling();
    clearTimeout(reconnectTimer);
    reconnectTimer = setTimeout(connectLive, delay);
  }

  // A phone wakes up or gets its network back: catch up now rather than at the next back-off.
  function wake() {
    if (ended || !view || document.visibilityState === "hidden") {
      return;
    }
    if (!socket) {
      connectLive();
    }
  }

  document.addEventListener("visibilitychange", wake);
  window.addEventListener("online", wake);
  setInterval(tick, 1000);
  start();
})();
