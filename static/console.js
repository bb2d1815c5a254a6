/*
 * The dispatcher console: every vehicle of a fleet on a map, live, and share links.
 *
 * 1. Sign in: POST {api_prefix}/auth/login answers a JWT. It is kept in this
 *    tab's sessionStorage (gone when the tab closes; never in a URL, so never
 *    in a log or a Referer) and sent as a bearer token. Sign-out forgets it.
 * 2. GET {api_prefix}/devices lists the instance's devices with their last
 *    fix and status; the map fits them all on first load.
 * 3. /ws/realtime brings positions live (authenticate with the token, batched
 *    frames). A lost connection is retried with back-off (1 s doubling to
 *    30 s, with jitter); meanwhile the device list is polled.
 * 4. Selecting a device shows its current trip (/tracks, /stats); an admin can
 *    share it (POST /sharing/sessions) and complete or cancel active shares.
 *
 * The status rule is the server's (tracker/fleet.py), with its numbers from
 * the page's config, re-applied every second so "offline" needs no reload.
 * No inline script or style (the CSP forbids both): styles go through
 * classes or the CSSOM, text through textContent, never innerHTML.
 */
(function () {
  "use strict";

  var STORAGE_KEY = "tracker.console";
  var BACKOFF_FIRST_MS = 1000;
  var BACKOFF_MAX_MS = 30000;
  var HEALTHY_CONNECTION_MS = 15000;
  var SHARES_REFRESH_MS = 15000;
  var MAX_EVENTS_SHOWN = 20;
  var STATS_REFRESH_MS = 5000;
  var GLIDE_MAX_MS = 1500; // a marker glides to its new fix in at most this long
  var PAGE_SIZE = 500;

  var pages = window.trackerPages;
  var setText = pages.setText;
  var agoText = pages.agoText;
  var config = pages.readConfig("console-config", {
    api_prefix: "/api/v1",
    tile_url: "",
    tile_attribution: "",
    offline_after_seconds: 600,
    moving_speed_mps: 0.5,
    poll_interval_seconds: 5,
    ping_interval_seconds: 25,
    max_expires_in_hours: 168,
  });
  var api = config.api_prefix;
  var session = null; // {token, expires_at, scope, instances, username, instance_id}

  var devices = {}; // token -> {data, marker, element, item}
  var geofences = {}; // id -> the fence's layer on the map
  var selected = null;
  var following = false;
  var fittedOnce = false;
  var map = null;
  var trail = null;
  var trailTrack = null;
  var pickMarker = null;

  var socket = null;
  var socketLive = false;
  var attempts = 0;
  var reconnectTimer = null;
  var pollTimer = null;
  var tickTimer = null;
  var sharesTimer = null;
  var statsAt = 0;
  var generation = 0; // bumps at sign-out: answers of an older session are dropped

  function $(id) {
    return document.getElementById(id);
  }

  function showMessage(id, text) {
    $(id).hidden = !text;
    setText(id, text || "");
  }

  function isAdmin() {
    return session && session.scope === "admin";
  }

  // -- the API -----------------------------------------------------------------

  function ApiError(status, message, retryAfter) {
    this.status = status;
    this.message = message;
    this.retryAfter = retryAfter;
  }

  function request(method, path, body, anonymous) {
    var mine = generation;
    var headers = { Accept: "application/json" };
    if (!anonymous && session) {
      headers.Authorization = "Bearer " + session.token;
    }
    if (body !== undefined) {
      headers["Content-Type"] = "application/json";
    }
    return fetch(api + path, {
      method: method,
      headers: headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      cache: "no-store",
      credentials: "omit",
    }).then(
      function (response) {
        return response.text().then(function (text) {
          var data = null;
          try {
            data = text ? JSON.parse(text) : null;
          } catch (error) {
            data = null;
          }
          if (mine !== generation) {
            throw new ApiError(0, "", 0); // signed out meanwhile
          }
          if (!response.ok) {
            var message =
              data && data.error && data.error.message
                ? data.error.message
                : "The server answered " + response.status + ".";
            var retry = Number(response.headers.get("Retry-After")) || 0;
            if (response.status === 401 && !anonymous) {
              signOut("Your session has ended. Sign in again.");
            }
            throw new ApiError(response.status, message, retry);
          }
          return data;
        });
      },
      function () {
        throw new ApiError(0, "The server cannot be reached. Check your connection.", 0);
      }
    );
  }

  function query(params) {
    return Object.keys(params)
      .filter(function (key) {
        return params[key] !== undefined && params[key] !== null;
      })
      .map(function (key) {
        return encodeURIComponent(key) + "=" + encodeURIComponent(params[key]);
      })
      .join("&");
  }

  function reportError(error) {
    if (error && error.status !== 0 && error.status !== 401) {
      showMessage("console-error", error.message || "Something went wrong.");
    } else if (error && error.message) {
      showMessage("console-error", error.message);
    }
  }

  // -- signing in and out ------------------------------------------------------

  function loadSession() {
    try {
      var stored = JSON.parse(sessionStorage.getItem(STORAGE_KEY) || "null");
      if (stored && stored.token && stored.expires_at * 1000 > Date.now()) {
        return stored;
      }
    } catch (error) {
      // no storage (private mode): sign in each time
    }
    return null;
  }

  function saveSession() {
    try {
      sessionStorage.setItem(STORAGE_KEY, JSON.stringify(session));
    } catch (error) {
      // the session still lives in memory
    }
  }

  function showView(name) {
    document.body.dataset.view = name;
    $("sign-in-view").hidden = name !== "sign-in";
    $("instance-view").hidden = name !== "instance";
    $("console-view").hidden = name !== "console";
    $("sign-out").hidden = name === "sign-in";
    $("who").hidden = name === "sign-in";
    $("connection").hidden = name !== "console";
    $("instance-name").hidden = name !== "console";
  }

  function onSignIn(event) {
    event.preventDefault();
    var username = $("username").value.trim();
    var password = $("password").value;
    showMessage("sign-in-notice", "");
    if (!username || !password) {
      showMessage("sign-in-error", "Enter your username and password.");
      return;
    }
    showMessage("sign-in-error", "");
    $("sign-in-button").disabled = true;
    request("POST", "/auth/login", { username: username, password: password }, true)
      .then(function (answer) {
        $("password").value = "";
        session = answer;
        session.instance_id = Array.isArray(answer.instances) ? answer.instances[0] : null;
        saveSession();
        begin();
      })
      .catch(function (error) {
        var text;
        if (error.status === 401) {
          text = "Wrong username or password.";
        } else if (error.status === 429) {
          text =
            "Too many failed attempts. Try again in " + formatWait(error.retryAfter || 60) + ".";
        } else {
          text = error.message || "Signing in failed.";
        }
        showMessage("sign-in-error", text);
      })
      .then(function () {
        $("sign-in-button").disabled = false;
      });
  }

  function formatWait(seconds) {
    return seconds < 90 ? seconds + " s" : Math.ceil(seconds / 60) + " min";
  }

  function onInstance(event) {
    event.preventDefault();
    var id = $("instance-id").value.trim();
    if (!id) {
      showMessage("instance-error", "Enter an instance id.");
      return;
    }
    showMessage("instance-error", "");
    request("GET", "/instances/" + encodeURIComponent(id))
      .then(function () {
        session.instance_id = id;
        saveSession();
        begin();
      })
      .catch(function (error) {
        showMessage(
          "instance-error",
          error.status === 404 ? "There is no instance with this id." : error.message
        );
      });
  }

  function signOut(notice) {
    generation += 1;
    session = null;
    try {
      sessionStorage.removeItem(STORAGE_KEY);
    } catch (error) {
      // nothing stored
    }
    closeSocket();
    [pollTimer, tickTimer, sharesTimer, reconnectTimer].forEach(clearTimeout);
    clearInterval(tickTimer);
    clearInterval(sharesTimer);
    pollTimer = tickTimer = sharesTimer = reconnectTimer = null;
    Object.keys(devices).forEach(function (token) {
      var device = devices[token];
      if (device.marker && map) {
        map.removeLayer(device.marker);
      }
    });
    devices = {};
    Object.keys(geofences).forEach(function (id) {
      if (map) {
        map.removeLayer(geofences[id]);
      }
    });
    geofences = {};
    $("event-list").textContent = "";
    $("events-empty").hidden = false;
    setSelected(null);
    fittedOnce = false;
    $("device-list").textContent = "";
    $("share-list").textContent = "";
    ["detail", "share-form", "share-result"].forEach(function (id) {
      $(id).hidden = true;
    });
    showMessage("console-error", "");
    showMessage("sign-in-notice", notice || "");
    showView("sign-in");
    $("username").focus();
  }

  function begin() {
    document.body.dataset.role = isAdmin() ? "admin" : "viewer";
    Array.prototype.forEach.call(document.querySelectorAll(".admin-only"), function (element) {
      if (!isAdmin()) {
        element.hidden = true;
      } else if (element.id === "share-open") {
        element.hidden = false;
      }
    });
    setText("who", session.username + (isAdmin() ? " (admin)" : " (viewer)"));
    if (!session.instance_id) {
      showView("instance");
      $("instance-id").focus();
      return;
    }
    showView("console");
    request("GET", "/instances/" + encodeURIComponent(session.instance_id))
      .then(function (instance) {
        setText("instance-name", instance.name);
      })
      .catch(function () {
        setText("instance-name", "");
      });
    ensureMap();
    setConnection("connecting");
    loadDevices(true)
      .then(function () {
        connect();
      })
      .catch(function (error) {
        if (error.status === 403 || error.status === 400) {
          showMessage("console-error", error.message);
        } else {
          reportError(error);
          startPolling();
        }
      });
    loadShares();
    loadGeofences();
    tickTimer = setInterval(tick, 1000);
    sharesTimer = setInterval(loadShares, SHARES_REFRESH_MS);
  }

  // -- devices -----------------------------------------------------------------

  function loadDevices(first) {
    var path = "/devices?" + query({ instance_id: session.instance_id, limit: PAGE_SIZE });
    return request("GET", path).then(function (page) {
      page.items.forEach(function (item) {
        var fix = item.last_position;
        upsert(item.device_token, {
          name: item.display_name,
          fix: fix,
          track: item.track_token,
        });
      });
      setText(
        "device-count",
        page.total > page.items.length
          ? "Showing " + page.items.length + " of " + page.total + " vehicles"
          : page.total + (page.total === 1 ? " vehicle" : " vehicles")
      );
      if (first) {
        fitAll();
      }
      showMessage("console-error", "");
    });
  }

  function statusOf(fix) {
    if (!fix || Date.now() / 1000 - fix.timestamp > config.offline_after_seconds) {
      return "offline";
    }
    if (fix.speed !== null && fix.speed !== undefined && fix.speed > config.moving_speed_mps) {
      return "moving";
    }
    return "stopped";
  }

  function upsert(token, update) {
    var device = devices[token];
    if (!device) {
      var name = update.name || token;
      device = devices[token] = { token: token, data: { name: name, fix: null, track: null } };
      device.item = listItem(device);
      insertSorted(device);
    }
    var data = device.data;
    if (update.name) {
      data.name = update.name;
    }
    var moved = false;
    if (update.fix && (!data.fix || update.fix.timestamp >= data.fix.timestamp)) {
      moved = !data.fix || data.fix.latitude !== update.fix.latitude || data.fix.longitude !== update.fix.longitude;
      data.fix = update.fix;
      if (update.track) {
        data.track = update.track;
      }
    }
    render(device, moved);
    return device;
  }

  function insertSorted(device) {
    var list = $("device-list");
    var name = device.data.name.toLowerCase();
    var before = null;
    Array.prototype.some.call(list.children, function (child) {
      if (child.dataset.sortName > name) {
        before = child;
        return true;
      }
      return false;
    });
    device.item.dataset.sortName = name;
    list.insertBefore(device.item, before);
  }

  function listItem(device) {
    var item = document.createElement("li");
    item.className = "device";
    item.dataset.token = device.token;
    var button = document.createElement("button");
    button.type = "button";
    button.className = "device-button";
    var name = document.createElement("span");
    name.className = "device-name";
    var status = document.createElement("span");
    status.className = "status";
    var speed = document.createElement("span");
    speed.className = "device-speed";
    var seen = document.createElement("span");
    seen.className = "device-seen";
    button.appendChild(name);
    button.appendChild(status);
    button.appendChild(speed);
    button.appendChild(seen);
    button.addEventListener("click", function () {
      setSelected(device.token === selected ? null : device.token);
      if (selected && device.data.fix && map) {
        map.panTo([device.data.fix.latitude, device.data.fix.longitude]);
      }
    });
    item.appendChild(button);
    return item;
  }

  function speedText(fix) {
    if (!fix || fix.speed === null || fix.speed === undefined) {
      return "";
    }
    return Math.round(fix.speed * 3.6) + " km/h";
  }

  function seenText(fix) {
    if (!fix) {
      return "never seen";
    }
    return "last seen " + agoText(Math.max(0, Date.now() / 1000 - fix.timestamp));
  }

  var STATUS_LABELS = { moving: "Moving", stopped: "Stopped", offline: "Offline" };

  function render(device, moved) {
    var data = device.data;
    var status = statusOf(data.fix);
    var item = device.item;
    item.dataset.status = status;
    setText(item.querySelector(".device-name"), data.name);
    var badge = item.querySelector(".status");
    badge.dataset.status = status;
    setText(badge, STATUS_LABELS[status]);
    setText(item.querySelector(".device-speed"), status === "offline" ? "" : speedText(data.fix));
    setText(item.querySelector(".device-seen"), seenText(data.fix));
    applyFilter(device);
    drawMarker(device, status, moved);
    if (device.token === selected) {
      renderDetail(device);
    }
  }

  function tick() {
    Object.keys(devices).forEach(function (token) {
      var device = devices[token];
      var status = statusOf(device.data.fix);
      var item = device.item;
      setText(item.querySelector(".device-seen"), seenText(device.data.fix));
      if (item.dataset.status !== status) {
        render(device, false);
      }
    });
    if (selected && devices[selected]) {
      setText("detail-seen", seenText(devices[selected].data.fix));
    }
  }

  function applyFilter(device) {
    var needle = $("filter").value.trim().toLowerCase();
    var match =
      !needle ||
      device.data.name.toLowerCase().indexOf(needle) !== -1 ||
      device.token.toLowerCase().indexOf(needle) !== -1;
    device.item.hidden = !match;
  }

  // -- the map -----------------------------------------------------------------

  function ensureMap() {
    if (map || typeof L === "undefined") {
      return map;
    }
    map = L.map("map", { zoomControl: true, attributionControl: true, worldCopyJump: true });
    map.setView([20, 0], 2);
    pages.addTiles(map, config);
    map.on("dragstart", function () {
      setFollowing(false);
    });
    map.on("click", function (event) {
      if (!$("share-form").hidden) {
        setDestination(event.latlng.lat, event.latlng.lng);
      }
    });
    return map;
  }

  var SVG = "http://www.w3.org/2000/svg";

  // An arrow that turns with the heading, or a dot for a fix without one.
  function vehicleDrawing() {
    var drawing = document.createElementNS(SVG, "svg");
    drawing.setAttribute("viewBox", "0 0 24 24");
    drawing.setAttribute("aria-hidden", "true");
    var arrow = document.createElementNS(SVG, "path");
    arrow.setAttribute("d", "M12 1.5 20.5 21.5 12 17 3.5 21.5Z");
    arrow.setAttribute("class", "vehicle-shape vehicle-pointer");
    var dot = document.createElementNS(SVG, "circle");
    dot.setAttribute("cx", "12");
    dot.setAttribute("cy", "12");
    dot.setAttribute("r", "7.5");
    dot.setAttribute("class", "vehicle-shape vehicle-dot");
    drawing.appendChild(arrow);
    drawing.appendChild(dot);
    return drawing;
  }

  function markerIcon(device) {
    var root = document.createElement("div");
    root.className = "vehicle";
    root.dataset.token = device.token;
    var arrow = document.createElement("div");
    arrow.className = "vehicle-arrow";
    arrow.appendChild(vehicleDrawing());
    var label = document.createElement("span");
    label.className = "vehicle-label";
    root.appendChild(arrow);
    root.appendChild(label);
    root.addEventListener("click", function () {
      setSelected(device.token);
    });
    device.element = root;
    return L.divIcon({ className: "vehicle-icon", html: root, iconSize: [28, 28], iconAnchor: [14, 14] });
  }

  function drawMarker(device, status, moved) {
    var fix = device.data.fix;
    if (!fix || !ensureMap()) {
      return;
    }
    var target = L.latLng(fix.latitude, fix.longitude);
    if (!device.marker) {
      device.marker = L.marker(target, { icon: markerIcon(device), keyboard: false }).addTo(map);
    } else if (moved) {
      glide(device, target);
    }
    var element = device.element;
    element.dataset.lat = String(fix.latitude);
    element.dataset.lng = String(fix.longitude);
    element.dataset.status = status;
    element.classList.toggle("offline", status === "offline");
    element.classList.toggle("selected", device.token === selected);
    var heading = fix.heading;
    var hasHeading = heading !== null && heading !== undefined;
    element.classList.toggle("no-heading", !hasHeading);
    if (hasHeading) {
      element.dataset.heading = String(heading);
      // Turn the short way: 350° to 10° is 20° clockwise, not 340° back.
      var last = device.rotation === undefined ? heading : device.rotation;
      device.rotation = last + ((((heading - last) % 360) + 540) % 360) - 180;
      element.querySelector(".vehicle-arrow").style.transform = "rotate(" + device.rotation + "deg)";
    } else {
      delete element.dataset.heading;
      element.querySelector(".vehicle-arrow").style.transform = "";
    }
    setText(element.querySelector(".vehicle-label"), device.data.name);
    if (moved && following && device.token === selected) {
      map.panTo(target);
    }
  }

  // A marker glides from where it is drawn to its new fix (requestAnimationFrame).
  function glide(device, target) {
    var from = device.marker.getLatLng();
    var started = performance.now();
    var duration = Math.min(GLIDE_MAX_MS, 1000);
    device.glideId = (device.glideId || 0) + 1;
    var id = device.glideId;
    function step(now) {
      if (id !== device.glideId || !device.marker) {
        return;
      }
      var t = Math.min(1, (now - started) / duration);
      var eased = t * (2 - t);
      device.marker.setLatLng([
        from.lat + (target.lat - from.lat) * eased,
        from.lng + (target.lng - from.lng) * eased,
      ]);
      if (t < 1) {
        requestAnimationFrame(step);
      }
    }
    requestAnimationFrame(step);
  }

  function fitAll() {
    if (!ensureMap()) {
      return;
    }
    var points = [];
    Object.keys(devices).forEach(function (token) {
      var fix = devices[token].data.fix;
      if (fix) {
        points.push([fix.latitude, fix.longitude]);
      }
    });
    if (points.length === 1) {
      map.setView(points[0], 15);
    } else if (points.length > 1) {
      map.fitBounds(points, { padding: [40, 40], maxZoom: 16 });
    }
    fittedOnce = fittedOnce || points.length > 0;
  }

  function setFollowing(value) {
    following = value;
    $("follow").setAttribute("aria-pressed", value ? "true" : "false");
    setText("follow", value ? "Following" : "Follow");
  }

  // -- the selected device -----------------------------------------------------

  function setSelected(token) {
    selected = token;
    setFollowing(false);
    Object.keys(devices).forEach(function (key) {
      var device = devices[key];
      device.item.classList.toggle("selected", key === token);
      if (device.element) {
        device.element.classList.toggle("selected", key === token);
      }
    });
    if (trail && map) {
      map.removeLayer(trail);
    }
    trail = null;
    trailTrack = null;
    $("share-form").hidden = true;
    $("share-result").hidden = true;
    clearPick();
    if (!token || !devices[token]) {
      $("detail").hidden = true;
      return;
    }
    $("detail").hidden = false;
    renderDetail(devices[token]);
    loadTrip(token);
  }

  function renderDetail(device) {
    var status = statusOf(device.data.fix);
    setText("detail-name", device.data.name);
    var badge = $("detail-status");
    badge.dataset.status = status;
    setText(badge, STATUS_LABELS[status] + (status === "offline" ? "" : " " + speedText(device.data.fix)));
    setText("detail-seen", seenText(device.data.fix));
    setText("share-device", device.data.name);
  }

  function distanceText(meters) {
    return meters < 1000 ? Math.round(meters) + " m" : (meters / 1000).toFixed(1) + " km";
  }

  function durationText(seconds) {
    var minutes = Math.round(seconds / 60);
    if (minutes < 60) {
      return minutes + " min";
    }
    return Math.floor(minutes / 60) + " h " + (minutes % 60) + " min";
  }

  function kmh(speed) {
    return speed === null || speed === undefined ? "–" : Math.round(speed * 3.6) + " km/h";
  }

  function loadTrip(token) {
    statsAt = Date.now();
    var path = "/devices/" + encodeURIComponent(token);
    var params = "?" + query({ instance_id: session.instance_id });
    request("GET", path + "/tracks" + params)
      .then(function (track) {
        if (selected !== token || !ensureMap()) {
          return;
        }
        if (trail) {
          map.removeLayer(trail);
        }
        trailTrack = track.track_token;
        trail = L.polyline(
          track.waypoints.map(function (w) {
            return [w.latitude, w.longitude];
          }),
          { color: "#1a5fd0", weight: 4, opacity: 0.75, className: "trail" }
        ).addTo(map);
        $("map").dataset.trailPoints = String(track.waypoints.length);
      })
      .catch(function (error) {
        if (error.status !== 404) {
          reportError(error);
        }
      });
    loadStats(token);
  }

  function loadStats(token) {
    statsAt = Date.now();
    var path = "/devices/" + encodeURIComponent(token) + "/stats?" + query({ instance_id: session.instance_id });
    request("GET", path)
      .then(function (stats) {
        if (selected !== token) {
          return;
        }
        setText("stat-distance", distanceText(stats.distance_meters));
        setText("stat-duration", durationText(stats.duration_seconds));
        setText("stat-average", kmh(stats.average_speed));
        setText("stat-max", kmh(stats.max_speed));
        setText("detail-trip", stats.active ? "Current trip" : "Last trip (ended)");
      })
      .catch(function (error) {
        if (error.status === 404 && selected === token) {
          ["stat-distance", "stat-duration", "stat-average", "stat-max"].forEach(function (id) {
            setText(id, "–");
          });
          setText("detail-trip", "No trip yet");
        } else {
          reportError(error);
        }
      });
  }

  function extendTrail(device) {
    var fix = device.data.fix;
    if (device.token !== selected || !fix) {
      return;
    }
    if (trail && trailTrack === device.data.track) {
      trail.addLatLng([fix.latitude, fix.longitude]);
      $("map").dataset.trailPoints = String(trail.getLatLngs().length);
    } else {
      loadTrip(device.token); // a new trip began
      return;
    }
    if (Date.now() - statsAt > STATS_REFRESH_MS) {
      loadStats(device.token);
    }
  }

  // -- live: /ws/realtime, or polling while it is down -------------------------

  function setConnection(mode) {
    document.body.dataset.connection = mode;
    var labels = {
      connecting: "Connecting…",
      live: "Live",
      polling: "Updating every " + config.poll_interval_seconds + " s",
    };
    setText("connection", labels[mode] || "");
  }

  function connect() {
    if (!session) {
      return;
    }
    var mine = generation;
    var url = (location.protocol === "https:" ? "wss://" : "ws://") + location.host + api + "/ws/realtime";
    var opened = 0;
    try {
      socket = new WebSocket(url);
    } catch (error) {
      scheduleReconnect();
      return;
    }
    var current = socket;
    current.onopen = function () {
      opened = Date.now();
      current.send(
        JSON.stringify({
          type: "authenticate",
          jwt: session.token,
          instance_id: session.instance_id,
          date_format: "unix",
          units: "metric",
          batch: true,
          events: true,
        })
      );
    };
    current.onmessage = function (event) {
      if (mine !== generation) {
        return;
      }
      var message;
      try {
        message = JSON.parse(event.data);
      } catch (error) {
        return;
      }
      if (message.type === "welcome") {
        socketLive = true;
        stopPolling();
        setConnection("live");
      } else if (message.type === "position") {
        livePosition(message);
      } else if (message.type === "positions") {
        message.positions.forEach(livePosition);
      } else if (message.type === "event") {
        showEvent(message.event);
      } else if (message.type === "ping") {
        current.send(JSON.stringify({ type: "pong" }));
      }
    };
    current.onclose = function (event) {
      if (current !== socket || mine !== generation) {
        return;
      }
      socket = null;
      socketLive = false;
      if (event.code === 4001) {
        signOut("Your session has ended. Sign in again.");
        return;
      }
      if (event.code === 4003) {
        showMessage("console-error", "Your account may not watch this instance.");
        return;
      }
      if (opened && Date.now() - opened > HEALTHY_CONNECTION_MS) {
        attempts = 0;
      }
      startPolling();
      scheduleReconnect();
    };
  }

  function scheduleReconnect() {
    var delay = Math.min(BACKOFF_MAX_MS, BACKOFF_FIRST_MS * Math.pow(2, attempts));
    attempts += 1;
    delay = delay * (0.75 + Math.random() * 0.5);
    clearTimeout(reconnectTimer);
    reconnectTimer = setTimeout(connect, delay);
  }

  function closeSocket() {
    if (socket) {
      var closing = socket;
      socket = null;
      socketLive = false;
      closing.onclose = null;
      closing.close(1000);
    }
  }

  function livePosition(message) {
    var fix = {
      latitude: message.Lat,
      longitude: message.Lng,
      speed: message.Speed,
      heading: message.Heading,
      accuracy: message.Accuracy,
      timestamp: Number(message.Timestamp),
    };
    var device = upsert(message.DeviceToken, {
      name: message.DisplayIdentifier,
      fix: fix,
      track: message.TrackToken,
    });
    extendTrail(device);
  }

  function startPolling() {
    if (pollTimer || !session) {
      return;
    }
    setConnection("polling");
    var poll = function () {
      pollTimer = null;
      if (!session || socketLive) {
        return;
      }
      loadDevices(false)
        .catch(reportError)
        .then(function () {
          if (session && !socketLive && !pollTimer) {
            pollTimer = setTimeout(poll, config.poll_interval_seconds * 1000);
          }
        });
    };
    pollTimer = setTimeout(poll, config.poll_interval_seconds * 1000);
  }

  function stopPolling() {
    clearTimeout(pollTimer);
    pollTimer = null;
  }

  // -- sharing ------------------------------------------------------------------

  function openShareForm() {
    if (!selected) {
      return;
    }
    $("share-result").hidden = true;
    $("share-form").hidden = false;
    showMessage("share-error", "");
    $("share-recipient").focus();
  }

  function setDestination(lat, lng) {
    $("share-destination").value = lat.toFixed(5) + ", " + lng.toFixed(5);
    showPick(lat, lng);
  }

  function showPick(lat, lng) {
    if (!ensureMap()) {
      return;
    }
    if (!pickMarker) {
      var pin = document.createElement("div");
      pin.className = "pick";
      pin.id = "destination-pick";
      pickMarker = L.marker([lat, lng], {
        icon: L.divIcon({ className: "pick-icon", html: pin, iconSize: [18, 18], iconAnchor: [9, 9] }),
        keyboard: false,
        interactive: false,
      }).addTo(map);
    } else {
      pickMarker.setLatLng([lat, lng]);
    }
  }

  function clearPick() {
    if (pickMarker && map) {
      map.removeLayer(pickMarker);
    }
    pickMarker = null;
  }

  function parseDestination(text) {
    var match = /^\s*(-?\d+(?:\.\d+)?)\s*[,; ]\s*(-?\d+(?:\.\d+)?)\s*$/.exec(text);
    if (!match) {
      return null;
    }
    var lat = Number(match[1]);
    var lng = Number(match[2]);
    if (!(lat >= -90 && lat <= 90) || !(lng >= -180 && lng <= 180)) {
      return null;
    }
    return { latitude: lat, longitude: lng };
  }

  function optional(id) {
    var value = $(id).value.trim();
    return value ? value : undefined;
  }

  function shareBody() {
    var hoursText = $("share-expires").value.trim().replace(",", ".");
    var hours = Number(hoursText);
    if (!hoursText || !isFinite(hours) || hours <= 0) {
      throw new Error("Expires in (hours): give a number of hours above 0, e.g. 4.");
    }
    if (hours > config.max_expires_in_hours) {
      throw new Error("Expires in (hours): at most " + config.max_expires_in_hours + " hours.");
    }
    var body = {
      device_token: selected,
      instance_id: session.instance_id,
      expires_in_hours: hours,
      recipient_name: optional("share-recipient"),
      order_id: optional("share-order"),
      notes: optional("share-notes"),
      share_config: {},
    };
    var destinationText = $("share-destination").value.trim();
    var label = optional("share-label");
    if (destinationText) {
      var destination = parseDestination(destinationText);
      if (!destination) {
        throw new Error(
          "Destination: give latitude, longitude (e.g. 51.52, -0.08), or click the map."
        );
      }
      if (label) {
        destination.label = label;
      }
      body.destination = destination;
    } else if (label) {
      throw new Error("Destination: give its coordinates (or click the map) for the label.");
    }
    ["show_speed", "show_heading", "show_eta", "show_destination_on_map", "auto_complete_on_arrival"].forEach(
      function (key) {
        body.share_config[key] = $("cfg-" + key).checked;
      }
    );
    return body;
  }

  function onCreateShare(event) {
    event.preventDefault();
    var body;
    try {
      body = shareBody();
    } catch (error) {
      showMessage("share-error", error.message);
      return;
    }
    showMessage("share-error", "");
    $("share-create").disabled = true;
    request("POST", "/sharing/sessions", body)
      .then(function (created) {
        $("share-form").hidden = true;
        $("share-form").reset();
        clearPick();
        setText("share-link", created.share_url);
        setText("copy-state", "");
        var qr = $("share-qr");
        qr.hidden = false;
        qr.src = api + "/share/" + encodeURIComponent(created.share_token) + "/qr.svg";
        $("share-result").hidden = false;
        loadShares();
      })
      .catch(function (error) {
        showMessage("share-error", error.message || "The link could not be created.");
      })
      .then(function () {
        $("share-create").disabled = false;
      });
  }

  function copyLink() {
    var text = $("share-link").textContent;
    var done = function () {
      setText("copy-state", "Copied");
    };
    if (navigator.clipboard && navigator.clipboard.writeText) {
      navigator.clipboard.writeText(text).then(done, selectLink);
    } else {
      selectLink();
    }
  }

  function selectLink() {
    var range = document.createRange();
    range.selectNodeContents($("share-link"));
    var selection = window.getSelection();
    selection.removeAllRanges();
    selection.addRange(range);
    setText("copy-state", "Selected: press Ctrl+C to copy");
  }

  function etaText(seconds) {
    if (seconds === null || seconds === undefined) {
      return "";
    }
    if (seconds <= 0) {
      return "arriving now";
    }
    var minutes = Math.max(1, Math.round(seconds / 60));
    return minutes < 60
      ? "ETA " + minutes + " min"
      : "ETA " + Math.floor(minutes / 60) + " h " + (minutes % 60) + " min";
  }

  function loadShares() {
    if (!session || !session.instance_id) {
      return;
    }
    var path = "/sharing/sessions?" + query({ instance_id: session.instance_id, status: "active", limit: 100 });
    request("GET", path)
      .then(function (page) {
        var list = $("share-list");
        list.textContent = "";
        page.items.forEach(function (share) {
          list.appendChild(shareItem(share));
        });
        $("shares-empty").hidden = page.items.length > 0;
      })
      .catch(reportError);
  }

  function shareItem(share) {
    var item = document.createElement("li");
    item.className = "share";
    item.dataset.id = share.id;
    var title = document.createElement("p");
    title.className = "share-title";
    title.textContent = share.recipient_name || "No recipient named";
    var device = devices[share.device_token];
    var facts = [device ? device.data.name : share.device_token];
    if (share.order_id) {
      facts.push("Order " + share.order_id);
    }
    var eta = etaText(share.eta_seconds);
    if (eta) {
      facts.push(eta);
    }
    facts.push(share.status);
    var line = document.createElement("p");
    line.className = "share-facts muted";
    line.textContent = facts.join(" · ");
    item.appendChild(title);
    item.appendChild(line);
    if (isAdmin()) {
      var actions = document.createElement("div");
      actions.className = "actions";
      actions.appendChild(shareAction("Complete", share, "POST", "/complete"));
      actions.appendChild(shareAction("Cancel", share, "DELETE", ""));
      item.appendChild(actions);
    }
    return item;
  }

  function shareAction(label, share, method, suffix) {
    var button = document.createElement("button");
    button.type = "button";
    button.textContent = label;
    button.addEventListener("click", function () {
      button.disabled = true;
      request(method, "/sharing/sessions/" + encodeURIComponent(share.id) + suffix)
        .then(loadShares)
        .catch(function (error) {
          button.disabled = false;
          reportError(error);
          loadShares();
        });
    });
    return button;
  }

  // -- start ------------------------------------------------------------------

  // -- geofences and events -----------------------------------------------------

  function loadGeofences() {
    var path = "/geofences?" + query({ instance_id: session.instance_id });
    return request("GET", path)
      .then(function (page) {
        page.items.forEach(drawGeofence);
      })
      .catch(reportError);
  }

  function drawGeofence(fence) {
    if (!ensureMap()) {
      return;
    }
    var style = { color: "#7b3fa0", weight: 2, fillOpacity: 0.08, interactive: false };
    var shape = fence.circle
      ? L.circle([fence.circle.latitude, fence.circle.longitude], fence.circle.radius_m, style)
      : L.geoJSON(fence.polygon, { style: style });
    shape.bindTooltip(fence.name, { permanent: true, direction: "center", className: "fence-label" });
    shape.addTo(map);
    geofences[fence.id] = shape;
  }

  var EVENT_TEXT = {
    "geofence.entered": "entered",
    "geofence.exited": "left",
    "device.online": "is back online",
    "device.offline": "went offline",
    "trip.started": "started a trip",
    "trip.ended": "ended a trip",
    "share.created": "share link created",
    "share.updated": "share link changed",
    "share.arrived": "arrived at the destination",
    "share.completed": "share completed",
    "share.cancelled": "share cancelled",
    "share.expired": "share expired",
  };

  function showEvent(event) {
    var data = event.data || {};
    var device = devices[data.device_token];
    var who = device ? device.data.name : data.device_token || "";
    var what = EVENT_TEXT[event.type] || event.type;
    if (data.geofence_name) {
      what += " " + data.geofence_name;
    }
    var item = document.createElement("li");
    item.dataset.type = event.type;
    var time = document.createElement("time");
    var when = new Date(event.timestamp);
    time.dateTime = event.timestamp;
    setText(time, isNaN(when) ? "" : when.toLocaleTimeString());
    var text = document.createElement("span");
    setText(text, (who ? who + " " : "") + what);
    item.appendChild(time);
    item.appendChild(text);
    var list = $("event-list");
    list.insertBefore(item, list.firstChild);
    while (list.children.length > MAX_EVENTS_SHOWN) {
      list.removeChild(list.lastChild);
    }
    $("events-empty").hidden = true;
    if (event.type === "share.completed" || event.type === "share.cancelled") {
      loadShares();
    }
  }

  function start() {
    $("sign-in-form").addEventListener("submit", onSignIn);
    $("instance-form").addEventListener("submit", onInstance);
    $("sign-out").addEventListener("click", function () {
      signOut("You have signed out.");
    });
    $("filter").addEventListener("input", function () {
      Object.keys(devices).forEach(function (token) {
        applyFilter(devices[token]);
      });
    });
    $("fit-all").addEventListener("click", fitAll);
    $("detail-close").addEventListener("click", function () {
      setSelected(null);
    });
    $("follow").addEventListener("click", function () {
      setFollowing(!following);
      var device = selected && devices[selected];
      if (following && device && device.data.fix && map) {
        map.panTo([device.data.fix.latitude, device.data.fix.longitude]);
      }
    });
    $("share-open").addEventListener("click", openShareForm);
    $("share-close").addEventListener("click", function () {
      $("share-form").hidden = true;
      clearPick();
    });
    $("share-destination").addEventListener("change", function () {
      var destination = parseDestination($("share-destination").value);
      if (destination) {
        showPick(destination.latitude, destination.longitude);
      }
    });
    $("share-form").addEventListener("submit", onCreateShare);
    $("result-close").addEventListener("click", function () {
      $("share-result").hidden = true;
    });
    $("copy-link").addEventListener("click", copyLink);
    $("share-qr").addEventListener("error", function () {
      $("share-qr").hidden = true;
    });
    session = loadSession();
    if (session) {
      begin();
    } else {
      showView("sign-in");
    }
  }

  start();
})();
