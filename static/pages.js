/*
 * What the console and the share page have in common, loaded before each
 * page's own script as `window.trackerPages`: the page's settings from its
 * JSON data block, text helpers, and the map background with its
 * attribution and its "tiles unavailable" note.
 *
 * No inline script or style (the pages' CSP forbids both): text goes in
 * through textContent; the only HTML made here is the tile attribution,
 * escaped first.
 */
(function () {
  "use strict";

  var OSM_COPYRIGHT_URL = "https://www.openstreetmap.org/copyright";

  function $(id) {
    return document.getElementById(id);
  }

  // The page's settings: `defaults`, overridden by the JSON block with this id.
  function readConfig(blockId, defaults) {
    var values = {};
    Object.keys(defaults).forEach(function (key) {
      values[key] = defaults[key];
    });
    try {
      var given = JSON.parse($(blockId).textContent);
      Object.keys(given).forEach(function (key) {
        values[key] = given[key];
      });
    } catch (error) {
      // keep the defaults: the page still works against a default server
    }
    return values;
  }

  // An element (or its id) gets this text, touching the DOM only on a change.
  function setText(element, text) {
    if (typeof element === "string") {
      element = $(element);
    }
    if (element.textContent !== text) {
      element.textContent = text;
    }
  }

  function agoText(seconds) {
    if (seconds < 3) {
      return "just now";
    }
    if (seconds < 60) {
      return Math.floor(seconds) + " s ago";
    }
    var minutes = Math.floor(seconds / 60);
    if (minutes < 60) {
      return minutes + " min ago";
    }
    var hours = Math.floor(minutes / 60);
    if (hours < 48) {
      return hours + " h " + (minutes % 60) + " min ago";
    }
    return Math.floor(hours / 24) + " days ago";
  }

  function escapeHtml(text) {
    return String(text).replace(/[&<>"']/g, function (c) {
      return { "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c];
    });
  }

  function attributionHtml(text) {
    // OpenStreetMap asks for a link to its copyright page beside its tiles.
    return escapeHtml(text || "").replace(
      "OpenStreetMap",
      '<a href="' + OSM_COPYRIGHT_URL + '" rel="noopener noreferrer">OpenStreetMap</a>'
    );
  }

  // The tile layer of config.tile_url on `map`, if one is set. The element
  // #map-note ("map background unavailable") shows while no tile has loaded
  // and one has failed; markers are drawn whatever the tiles do.
  function addTiles(map, config) {
    if (!config.tile_url) {
      return;
    }
    var loaded = false;
    var tiles = L.tileLayer(config.tile_url, {
      maxZoom: 19,
      attribution: attributionHtml(config.tile_attribution),
    });
    tiles.on("tileload", function () {
      loaded = true;
      $("map-note").hidden = true;
    });
    tiles.on("tileerror", function () {
      $("map-note").hidden = loaded;
    });
    tiles.addTo(map);
  }

  window.trackerPages = {
    readConfig: readConfig,
    setText: setText,
    agoText: agoText,
    escapeHtml: escapeHtml,
    addTiles: addTiles,
  };
})();
