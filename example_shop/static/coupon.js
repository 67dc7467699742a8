// Live coupon check at checkout (progressive enhancement: without JavaScript the
// "Apply" button asks the server, which runs the same rule, and the server
// checks again when the order is placed).  It calls flask_loyalty's JSON
// endpoint POST <prefix>/api/coupons/validate.
(function () {
  "use strict";
  var form = document.getElementById("checkout");
  var input = document.getElementById("coupon");
  var status = document.getElementById("coupon-status");
  var toPay = document.getElementById("to-pay");
  if (!form || !input || !status || !toPay || !window.fetch) { return; }
  var subtotal = Number(form.dataset.orderTotal);
  var tierDiscount = Number(form.dataset.tierDiscount || 0);
  var reasons = JSON.parse(form.dataset.reasons || "{}");
  var timer = null;

  function show(text, ok, discount) {
    status.textContent = text;
    status.className = text ? (ok ? "ok" : "error") : "";
    toPay.textContent = "€" + Math.max(subtotal - tierDiscount - (discount || 0), 0).toFixed(2);
  }

  function check() {
    var code = input.value.trim();
    if (!code) { show("", true, 0); return; }
    fetch(form.dataset.validateUrl, {
      method: "POST",
      headers: {"Content-Type": "application/json", "Accept": "application/json"},
      credentials: "same-origin",
      body: JSON.stringify({code: code, order_total: form.dataset.orderTotal,
                            customer_ref: form.dataset.customerRef})
    }).then(function (response) {
      if (!response.ok) { throw new Error(String(response.status)); }  // 429: too many tries
      return response.json();
    }).then(function (quote) {
      if (quote.valid) {
        show("Coupon applied: −€" + Number(quote.discount).toFixed(2), true, Number(quote.discount));
      } else {
        show(reasons[quote.reason] || "This code cannot be used.", false, 0);
      }
    }).catch(function () { show("", true, 0); });  // offline, blocked or rate-limited: the server checks on submit
  }

  input.addEventListener("input", function () { clearTimeout(timer); timer = setTimeout(check, 500); });
  input.addEventListener("change", function () { clearTimeout(timer); check(); });
})();
