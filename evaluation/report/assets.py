"""The report page's inline style and script: no external assets, nothing fetched.

The script
- fills every <img data-key> from the page's image map (`#images`, a JSON object key -> data URI or file) when
  the part of the page holding it is shown, so that a pair's view decodes its images only when opened;
- opens a pair's view (`#pair-<id>`, a full-page overlay) and a lightbox with the full-resolution image on click;
- sorts the per-pair table by a clicked header (numbers by value, missing values last) and filters it by text,
  method and status, showing the first `LIMIT` matching rows until "show all" is pressed;
- marks the page: body data-images-loaded / data-images-broken count the images shown on the main page, and with
  the address ending in #selfcheck data-selfcheck-decoded / data-selfcheck-broken count every image of the map
  (views and full-resolution) decoded in turn (what the tests and a curious reader use).
"""

STYLE = """
body{font-family:system-ui,sans-serif;margin:0 auto;max-width:1280px;color:#222;padding:0 1em 3em;line-height:1.35}
h1{margin:.6em 0 .2em}h2{margin-top:1.6em;border-bottom:1px solid #ddd;padding-bottom:.2em}
nav.toc{font-size:.9em;margin:.4em 0 1em}nav.toc a{margin-right:.9em}
table{border-collapse:collapse;margin:.5em 0 1.5em}th,td{border:1px solid #ccc;padding:.3em .6em;text-align:right}
th:first-child,td:first-child{text-align:left}thead th{background:#f3f3f3}td.best{font-weight:bold}small{color:#555;white-space:nowrap}
table.runs td,table.meta td{text-align:left;white-space:normal}
.note{color:#555;font-size:.9em}.random{color:#b00}.warn{background:#fee;border:1px solid #c00;padding:.5em}
ul.warnings{background:#fff4e5;border:1px solid #e0a040;padding:.6em 1em .6em 2em;margin:.5em 0}
ul.warnings li{margin:.2em 0}ul.warnings .runs{color:#555}ul.warnings details{display:inline}
figure{display:inline-block;margin:0 1em 1em 0;vertical-align:top}code{background:#f3f3f3;padding:0 .2em}
img[data-key]{cursor:zoom-in;background:#f3f3f3}
.grid td,.grid th{vertical-align:top;text-align:center;font-size:.8em}
.grid img{width:150px;height:150px;object-fit:contain;display:block;margin:auto}
.missing{width:150px;min-height:60px;display:flex;align-items:center;justify-content:center;background:#eee;color:#900;
 margin:auto;font-size:.8em;padding:.3em;box-sizing:border-box;overflow:hidden}
.extremes td{vertical-align:top}.strip{display:flex;gap:4px;flex-wrap:wrap}
.strip a{display:block;text-align:center;font-size:.75em;color:#222;text-decoration:none;width:84px}
.strip img{width:80px;height:80px;object-fit:contain;display:block}
#pairs-table{font-size:.85em}#pairs-table th{cursor:pointer;user-select:none;position:sticky;top:0}
#pairs-table th[aria-sort=ascending]::after{content:" \\25B2"}#pairs-table th[aria-sort=descending]::after{content:" \\25BC"}
#pairs-table td.err{max-width:28em;overflow:hidden;text-overflow:ellipsis;white-space:nowrap;text-align:left}
tr.status-failed td,tr.status-missing td,tr.status-damaged td,tr.status-error td{color:#900}
.filters{display:flex;gap:.6em;align-items:center;flex-wrap:wrap;margin:.5em 0}.filters input{min-width:18em}
section.pair{display:none}
section.pair:target{display:block;position:fixed;inset:0;overflow:auto;background:#fff;z-index:10;padding:1em 2em}
.pair .images{display:flex;gap:12px;flex-wrap:wrap;align-items:flex-start}
.pair .images figure{margin:0;text-align:center;font-size:.85em;max-width:300px}
.pair .images img{width:256px;height:256px;object-fit:contain;display:block;margin:auto}
.pair .bar a{margin-right:1em}
#lightbox{position:fixed;inset:0;background:rgba(0,0,0,.85);z-index:20;display:flex;flex-direction:column;
 align-items:center;justify-content:center;color:#eee;cursor:zoom-out}
#lightbox[hidden]{display:none}#lightbox img{max-width:96vw;max-height:88vh;image-rendering:auto;background:#fff}
#lightbox p{margin:.5em;font-size:.9em;max-width:90vw;text-align:center}
"""

SCRIPT = r"""
(function () {
  var IMAGES = JSON.parse(document.getElementById('images').textContent);
  var FULL = JSON.parse(document.getElementById('full').textContent);
  var ORIGINAL = JSON.parse(document.getElementById('originals').textContent);
  var LIMIT = 200;
  function fill(root) {
    var imgs = root.querySelectorAll('img[data-key]');
    for (var i = 0; i < imgs.length; i++) {
      var img = imgs[i];
      if (!img.getAttribute('src') && IMAGES[img.dataset.key]) img.src = IMAGES[img.dataset.key];
    }
  }
  // 1. the main page's images now; a pair view's when it opens
  fill(document.getElementById('main'));
  function openTarget() {
    var id = decodeURIComponent(location.hash.slice(1));
    var target = id && document.getElementById(id);
    if (target && target.classList.contains('pair')) fill(target);
  }
  window.addEventListener('hashchange', openTarget);
  openTarget();
  // 2. lightbox: the full-resolution image of a clicked one
  var box = document.getElementById('lightbox'), boxImg = box.querySelector('img'), boxText = box.querySelector('p');
  document.addEventListener('click', function (event) {
    var img = event.target.closest ? event.target.closest('img[data-key]') : null;
    if (!img || img.closest('a')) return;  // an image inside a link follows the link (e.g. to a pair's view)
    event.preventDefault();
    var key = img.dataset.key, full = key in FULL;
    boxImg.src = FULL[key] || IMAGES[key];
    boxText.textContent = (img.alt || '') + ': ' + (full ? 'full resolution' : 'full resolution not in this page, view size shown') +
      '; stored at ' + (ORIGINAL[key] || '?') + ' (click or Esc to close)';
    box.hidden = false;
  });
  box.addEventListener('click', function () { box.hidden = true; boxImg.removeAttribute('src'); });
  document.addEventListener('keydown', function (event) {
    if (event.key !== 'Escape') return;
    if (!box.hidden) { box.hidden = true; return; }
    if (location.hash.indexOf('#pair-') === 0) location.hash = 'pairs';
  });
  // 3. the per-pair table: sort, filter, show the first LIMIT rows
  var table = document.getElementById('pairs-table');
  if (table) {
    var body = table.tBodies[0], rows = Array.prototype.slice.call(body.rows), showAll = false;
    var query = document.getElementById('pairs-filter'), method = document.getElementById('pairs-method');
    var status = document.getElementById('pairs-status'), count = document.getElementById('pairs-count');
    var more = document.getElementById('pairs-more');
    var apply = function () {
      var terms = query.value.toLowerCase().split(/\s+/).filter(Boolean), matched = 0;
      rows.forEach(function (row) {
        var text = row.textContent.toLowerCase();
        var ok = (!method.value || row.dataset.method === method.value) && (!status.value || row.dataset.status === status.value) &&
          terms.every(function (t) { return text.indexOf(t) >= 0; });
        if (ok) matched++;
        row.hidden = !(ok && (showAll || matched <= LIMIT));
      });
      count.textContent = matched + ' of ' + rows.length + ' rows match' + (matched > LIMIT && !showAll ? ', the first ' + LIMIT + ' shown' : '');
      more.hidden = showAll || matched <= LIMIT;
    };
    var value = function (row, column) {
      var cell = row.cells[column], v = cell.getAttribute('data-v');
      if (v !== null) return v === '' ? null : parseFloat(v);
      return cell.textContent.toLowerCase();
    };
    var headers = table.tHead.rows[0].cells;
    Array.prototype.forEach.call(headers, function (th, column) {
      th.addEventListener('click', function () {
        var ascending = th.getAttribute('aria-sort') !== 'ascending';
        Array.prototype.forEach.call(headers, function (h) { h.removeAttribute('aria-sort'); });
        th.setAttribute('aria-sort', ascending ? 'ascending' : 'descending');
        rows.sort(function (a, b) {
          var x = value(a, column), y = value(b, column);
          if (x === null || y === null) return (x === null) - (y === null);  // missing values last
          return (x < y ? -1 : x > y ? 1 : 0) * (ascending ? 1 : -1);
        });
        rows.forEach(function (row) { body.appendChild(row); });
        apply();
      });
    });
    [query, method, status].forEach(function (input) { input.addEventListener('input', apply); });
    more.addEventListener('click', function () { showAll = true; apply(); });
    apply();
  }
  // 4. marks for tests and readers: images shown on the main page, and with #selfcheck every image of the page
  window.addEventListener('load', function () {
    var shown = Array.prototype.slice.call(document.getElementById('main').querySelectorAll('img[data-key]'));
    var broken = shown.filter(function (i) { return !(i.complete && i.naturalWidth > 0); });
    document.body.setAttribute('data-images-loaded', String(shown.length - broken.length));
    document.body.setAttribute('data-images-broken', String(broken.length));
    if (broken.length) {
      var warn = document.getElementById('broken');
      warn.hidden = false;
      warn.textContent = broken.length + ' image(s) could not be loaded' +
        (document.body.dataset.assets === 'external' ? ': keep the assets/ folder next to report.html.' : '.');
    }
    if (location.hash !== '#selfcheck') return;
    var sources = Object.keys(IMAGES).map(function (k) { return IMAGES[k]; })
      .concat(Object.keys(FULL).map(function (k) { return FULL[k]; }).filter(Boolean));
    var decoded = 0, failed = 0;
    var next = function (index) {
      if (index >= sources.length) {
        document.body.setAttribute('data-selfcheck-decoded', String(decoded));
        document.body.setAttribute('data-selfcheck-broken', String(failed));
        return;
      }
      var probe = new Image();
      probe.onload = function () { if (probe.naturalWidth > 0) decoded++; else failed++; next(index + 1); };
      probe.onerror = function () { failed++; next(index + 1); };
      probe.src = sources[index];
    };
    next(0);
  });
})();
"""
