"""The survey page, its one-click links, the thank-you page and the JSON endpoint (issue 5)."""

from __future__ import annotations

import re
import threading
from decimal import Decimal

import pytest
from sqlalchemy import func, select

from flask_loyalty import tokens
from flask_loyalty.models import Coupon, SurveyResponse

FORM = {"source": "search_engine", "experience": "4", "ease": "5", "recommend": "10", "comment": "Fast!"}


def _order(shop, ref="o1", customer="c1", locale=None):
    shop.loyalty.upsert_customer(customer, locale=locale, name="Ana")
    return shop.loyalty.record_purchase(ref, customer, "20.00", email=f"{customer}@example.com")


def _path(shop, ref="o1"):
    return shop.loyalty.links.survey(ref).replace("http://shop.test", "")


def _api(path):
    return path.replace("/survey/", "/api/surveys/")


def _count(shop):
    return shop.db.session.execute(select(func.count(SurveyResponse.id))).scalar_one()


def test_form_is_accessible_and_in_the_customers_language(shop):
    _order(shop, locale="ro")
    r = shop.client.get(_path(shop), headers={"Accept-Language": "en"})
    assert r.status_code == 200 and r.headers["Cache-Control"] == "no-store"
    assert r.headers["Referrer-Policy"] == "no-referrer"
    html = r.get_data(as_text=True)
    assert '<html lang="ro"' in html
    assert "Cum ne-ați găsit?" in html and "Trimite răspunsurile" in html
    assert html.count("<fieldset") == 4 and html.count("<legend") == 4
    assert '<label for="f-comment"' in html and '<textarea id="f-comment" name="comment"' in html
    for i in range(11):
        assert f'<label class="loyalty-choice" for="f-recommend-{i}">' in html
        assert f'id="f-recommend-{i}" name="recommend" value="{i}"' in html
    assert "<script" not in html
    assert 'method="post"' in html


def test_page_in_each_language(shop):
    for locale, text, button in [("en", "How did you find us?", "Send my answers"),
                                 ("es", "¿Cómo nos conociste?", "Enviar mis respuestas"),
                                 ("ro", "Cum ne-ați găsit?", "Trimite răspunsurile"),
                                 ("ru", "Как вы о нас узнали?", "Отправить ответы")]:
        _order(shop, "o-" + locale, "c-" + locale, locale=locale)
        html = shop.client.get(_path(shop, "o-" + locale)).get_data(as_text=True)
        assert text in html and button in html and f'<html lang="{locale}"' in html


def test_submit_then_thanks_then_already_answered(shop):
    _order(shop)
    path = _path(shop)
    r = shop.client.post(path, data=FORM)
    assert r.status_code == 303 and r.location.endswith(path + "/thanks")
    thanks = shop.client.get(path + "/thanks")
    html = thanks.get_data(as_text=True)
    assert thanks.status_code == 200 and "Thank you!" in html
    # a promoter gets the wallet (referral) link
    wallet = re.search(r'href="(http://shop.test/loyalty/wallet/[^"]+)"', html)
    assert wallet and tokens.load("wallet", wallet.group(1).rsplit("/", 1)[1]) == {"c": "c1"}
    assert "get in touch" not in html
    # second submit: "already answered", nothing overwritten
    again = shop.client.post(path, data={**FORM, "recommend": "0", "comment": "changed"})
    assert again.status_code == 200 and "You have already answered" in again.get_data(as_text=True)
    shop.db.session.expire_all()
    assert shop.loyalty.surveys.response("o1").values["comment"] == "Fast!"
    assert shop.loyalty.surveys.response("o1").values["recommend"] == 10
    assert "You have already answered" in shop.client.get(path).get_data(as_text=True)
    assert "You have already answered" in shop.client.get(path + "?recommend=1").get_data(as_text=True)
    assert _count(shop) == 1


def test_detractor_is_told_the_shop_will_be_in_touch(shop):
    _order(shop)
    path = _path(shop)
    shop.client.post(path, data={**FORM, "recommend": "4"})
    html = shop.client.get(path + "/thanks").get_data(as_text=True)
    assert "will get in touch with you soon" in html and "/wallet/" not in html


def test_passive_gets_neither(shop):
    _order(shop)
    path = _path(shop)
    shop.client.post(path, data={**FORM, "recommend": "8"})
    html = shop.client.get(path + "/thanks").get_data(as_text=True)
    assert "get in touch" not in html and "/wallet/" not in html


def test_thanks_before_answering_goes_to_the_form(shop):
    _order(shop)
    path = _path(shop)
    r = shop.client.get(path + "/thanks")
    assert r.status_code == 303 and r.location.endswith(path)


def test_validation_errors_keep_the_answers(shop):
    _order(shop)
    path = _path(shop)
    r = shop.client.post(path, data={"source": "advert", "experience": "9", "ease": "2", "comment": "Keep me <b>"})
    assert r.status_code == 400
    html = r.get_data(as_text=True)
    assert 'role="alert"' in html and "Please check your answers" in html
    assert "Please choose one of the numbers shown." in html        # experience out of range
    assert "Please answer this question." in html                   # recommend required
    assert 'href="#f-experience-0"' in html and 'href="#f-recommend-0"' in html
    assert 'value="advert" checked' in html and 'value="2" checked' in html
    assert "Keep me &lt;b&gt;</textarea>" in html
    assert 'aria-invalid="true"' in html and 'aria-describedby="e-recommend' in html
    assert _count(shop) == 0


def test_empty_submit_and_too_long_comment(shop):
    _order(shop, locale="es")
    path = _path(shop)
    r = shop.client.post(path, data={})
    assert r.status_code == 400 and "Por favor, responde al menos a una pregunta." in r.get_data(as_text=True)
    r = shop.client.post(path, data={"recommend": "5", "comment": "x" * 2001})
    assert r.status_code == 400 and "Esta respuesta es demasiado larga." in r.get_data(as_text=True)
    assert _count(shop) == 0


def test_one_click_records_and_prefills(shop):
    _order(shop)
    path = _path(shop)
    r = shop.client.get(path + "?recommend=3")
    html = r.get_data(as_text=True)
    assert r.status_code == 200 and 'role="status"' in html and "we saved your answer" in html
    assert 'name="recommend" value="3" checked' in html
    resp = shop.loyalty.surveys.response("o1")
    assert resp.values == {"recommend": 3} and not resp.completed and resp.channel == "mail"
    # a one-click answer counts in the figures even if the rest is skipped
    assert shop.loyalty.surveys.stats().nps == -100.0
    # a HEAD request (link scanners) records nothing new
    shop.client.head(path + "?recommend=9")
    shop.db.session.expire_all()
    assert shop.loyalty.surveys.response("o1").values == {"recommend": 3}
    # the rest of the form completes the response
    r = shop.client.post(path, data={"recommend": "3", "experience": "2"})
    assert r.status_code == 303
    shop.db.session.expire_all()
    resp = shop.loyalty.surveys.response("o1")
    assert resp.completed and resp.values == {"recommend": 3, "experience": 2}


def test_one_click_only_preselects_when_configured(shop):
    """LOYALTY_SURVEY_ONE_CLICK_STORES=False: opening score links (as a mail scanner does) stores nothing."""
    shop.app.config["LOYALTY_SURVEY_ONE_CLICK_STORES"] = False
    _order(shop)
    path = _path(shop)
    for score in ("0", "10", "3"):                      # a scanner opens every link of the mail
        r = shop.client.get(path + f"?recommend={score}")
        assert r.status_code == 200
    html = r.get_data(as_text=True)
    assert 'name="recommend" value="3" checked' in html and "we saved your answer" not in html
    assert _count(shop) == 0 and shop.loyalty.surveys.response("o1") is None
    assert 'value="12" checked' not in shop.client.get(path + "?recommend=12").get_data(as_text=True)
    r = shop.client.post(path, data={"recommend": "3", "experience": "4"})    # the shopper's Send
    assert r.status_code == 303
    shop.db.session.expire_all()
    assert shop.loyalty.surveys.response("o1").values == {"recommend": 3, "experience": 4}


def test_one_click_with_a_bad_number(shop):
    _order(shop)
    r = shop.client.get(_path(shop) + "?recommend=12")
    assert r.status_code == 400 and "Please choose one of the numbers shown." in r.get_data(as_text=True)
    assert _count(shop) == 0


def test_scale_answer_with_thousands_of_digits_is_refused(shop):
    """int() of a >4300-digit string raises ValueError: such answers are off the scale (400), not a 500."""
    _order(shop)
    path = _path(shop)
    huge = "9" * 5000
    r = shop.client.get(path + "?recommend=" + huge)
    assert r.status_code == 400 and "Please choose one of the numbers shown." in r.get_data(as_text=True)
    r = shop.client.post(path, data=dict(FORM, recommend=huge))
    assert r.status_code == 400 and "Please choose one of the numbers shown." in r.get_data(as_text=True)
    r = shop.client.post(_api(path), json={"answers": {"recommend": huge}})
    assert r.status_code == 400 and r.get_json()["errors"] == {"recommend": ["Please choose one of the numbers shown."]}
    r = shop.client.post(_api(path), data='{"answers": {"recommend": ' + huge + "}}", content_type="application/json")
    assert r.status_code == 400
    assert _count(shop) == 0
    assert shop.client.get(path + "?recommend=" + "0" * 40 + "9").status_code == 200   # leading zeros: still 9
    assert shop.loyalty.surveys.response("o1").values == {"recommend": 9}


@pytest.mark.parametrize("mangle,status,text", [
    (lambda t: t[:-3] + ("AAA" if not t.endswith("AAA") else "BBB"), 404, "This link does not work"),
    (lambda t: "nonsense", 404, "This link does not work"),
])
def test_tampered_links_get_a_friendly_page(shop, mangle, status, text):
    _order(shop)
    token = _path(shop).rsplit("/", 1)[1]
    for url in (f"/loyalty/survey/{mangle(token)}", f"/loyalty/survey/{mangle(token)}?recommend=9"):
        r = shop.client.get(url)
        assert r.status_code == status and text in r.get_data(as_text=True)
    r = shop.client.post(f"/loyalty/survey/{mangle(token)}", data=FORM)
    assert r.status_code == status
    assert _count(shop) == 0


def test_expired_links(make_shop):
    s = make_shop(LOYALTY_TOKEN_MAX_AGE={"survey": -1})
    with s.app.app_context():
        _order(s)
        r = s.client.get(_path(s))
        assert r.status_code == 410 and "This link has expired" in r.get_data(as_text=True)
        assert s.client.post(_api(_path(s)), json={"answers": {"recommend": 9}}).status_code == 410
        assert _count(s) == 0


def test_foreign_purpose_and_unknown_order_links(shop):
    _order(shop)
    wallet_token = tokens.make("wallet", {"o": "o1"})
    assert shop.client.get(f"/loyalty/survey/{wallet_token}").status_code == 404
    gone = tokens.make("survey", {"o": "deleted-order"})
    r = shop.client.get(f"/loyalty/survey/{gone}")
    assert r.status_code == 404 and "Not found" in r.get_data(as_text=True)
    assert shop.client.get(f"/loyalty/survey/{tokens.make('survey', ['o1'])}").status_code == 404
    assert _count(shop) == 0


def test_survey_link_refuses_an_erased_customer(shop):
    """After erasure the survey link stores nothing more, like the wallet (friendly 404 page, JSON 404)."""
    _order(shop)
    path = _path(shop)
    shop.loyalty.consent.erase("c1")
    wallet = shop.loyalty.links.wallet("c1").replace("http://shop.test", "")
    assert shop.client.get(wallet).status_code == 404
    for r in (shop.client.get(path), shop.client.get(path + "?recommend=10"),
              shop.client.post(path, data=dict(FORM, comment="I am Ana, +34 600 000 000")),
              shop.client.get(path + "/thanks")):
        assert r.status_code == 404 and "Not found" in r.get_data(as_text=True)
    r = shop.client.post(_api(path), json={"answers": {"recommend": 10, "comment": "I am Ana"}})
    assert r.status_code == 404 and r.get_json() == {"error": "not_found"}
    assert shop.client.get(_api(path)).status_code == 404
    shop.db.session.expire_all()
    assert _count(shop) == 0 and shop.loyalty.surveys.stats().responses == 0


# --- JSON endpoint --------------------------------------------------------------------

def test_api_describes_the_survey(shop):
    _order(shop, locale="ru")
    r = shop.client.get(_api(_path(shop)))
    body = r.get_json()
    assert r.status_code == 200 and body["locale"] == "ru" and body["completed"] is False
    q = {x["id"]: x for x in body["questions"]}
    assert q["recommend"]["min"] == 0 and q["recommend"]["max"] == 10 and q["recommend"]["required"] is True
    assert q["source"]["choices"][0] == {"value": "search_engine", "label": "Поисковая система"}
    assert q["comment"]["max_length"] == 2000


def test_api_answers_with_the_same_rules(shop):
    _order(shop)
    url = _api(_path(shop))
    r = shop.client.post(url, json={"answers": {"recommend": 11, "source": "tv", "colour": "red"}})
    assert r.status_code == 400
    assert r.get_json() == {"error": "invalid_input", "errors": {
        "recommend": ["Please choose one of the numbers shown."], "source": ["Please choose one of the options shown."],
        "colour": ["Unknown field."]}}
    assert shop.client.post(url, json={"answers": {"experience": 3}}).get_json()["errors"] == {
        "recommend": ["Please answer this question."]}
    assert shop.client.post(url, json={"recommend": 9}).status_code == 400          # answers must be wrapped
    assert shop.client.post(url, json=[1]).status_code == 400
    assert shop.client.post(url, data="not json", content_type="application/json").status_code == 400
    assert shop.client.post(url, json={"answers": {"recommend": 9}, "partial": "yes"}).status_code == 400
    assert _count(shop) == 0
    r = shop.client.post(url, json={"answers": {"recommend": 9}, "partial": True})
    assert r.status_code == 200 and r.get_json()["status"] == "recorded"
    r = shop.client.post(url, json={"answers": {"experience": 5, "comment": "Great"}})
    body = r.get_json()
    assert r.status_code == 201 and body["status"] == "completed" and body["promoter"] is True
    assert body["answers"] == {"recommend": 9, "experience": 5, "comment": "Great"}
    assert body["wallet_url"].startswith("http://shop.test/loyalty/wallet/")
    r = shop.client.post(url, json={"answers": {"recommend": 1}})
    assert r.status_code == 409 and r.get_json()["error"] == "already_answered"
    assert r.get_json()["answers"]["recommend"] == 9
    assert shop.client.post(url.replace("/api/surveys/", "/api/surveys/x"), json={"answers": {}}).status_code == 404
    assert shop.loyalty.surveys.response("o1").channel == "api"


# --- reward -----------------------------------------------------------------------------

REWARD = {"kind": "percent", "value": "5", "valid_days": 30}


@pytest.mark.parametrize("data", [b"[" * 3000 + b"]" * 3000,
                                  b'{"answers": ' + b"[" * 3000 + b"]" * 3000 + b"}",
                                  b'{"answers": {"recommend": NaN}}',
                                  b'{"answers": {"recommend": Infinity}}'])
def test_api_refuses_deep_nesting_and_non_json_numbers(shop, data):
    """A RecursionError or a NaN from the JSON parser is a 400 with the usual error body, never a 500."""
    _order(shop)
    r = shop.client.post(_api(_path(shop)), data=data, content_type="application/json")
    assert r.status_code == 400
    assert r.get_json() == {"error": "invalid_input", "errors": {"_schema": ["A JSON object is expected."]}}
    assert _count(shop) == 0


def _survey_coupons(shop):
    """Coupons issued for answering (other areas, e.g. the welcome coupon of the plan, make their own)."""
    return shop.db.session.execute(select(Coupon).where(Coupon.campaign == "survey")).scalars().all()


def test_reward_coupon_once_per_answered_order(make_shop):
    s = make_shop(LOYALTY_SURVEY_REWARD=REWARD)
    with s.app.app_context():
        _order(s)
        path = _path(s)
        s.client.get(path + "?recommend=7")                  # a one-click answer alone earns nothing
        assert _survey_coupons(s) == []
        s.client.post(path, data=FORM)
        s.client.post(path, data=FORM)
        s.loyalty.surveys.answer("o1", {"recommend": 1})
        coupons = _survey_coupons(s)
        assert len(coupons) == 1
        c = coupons[0]
        assert c.kind == "percent" and c.value == Decimal("5") and c.customer_ref == "c1" and c.campaign == "survey"
        assert s.loyalty.surveys.response("o1").reward_code == c.code
        html = s.client.get(path + "/thanks").get_data(as_text=True)
        assert c.code in html and "5% off your next order" in html and "Valid until" in html
        from flask_loyalty.models import Message

        mails = s.db.session.execute(select(Message).where(Message.kind == "survey_reward")).scalars().all()
        assert len(mails) == 1 and mails[0].payload["code"] == c.code


def test_reward_under_8_concurrent_submits(make_shop):
    s = make_shop(LOYALTY_SURVEY_REWARD={"kind": "fixed", "value": "3.00"})
    with s.app.app_context():
        _order(s)
        path = _path(s)
    barrier = threading.Barrier(8)
    codes, errors = [], []

    def worker(i):
        with s.app.app_context():
            try:
                client = s.app.test_client()
                barrier.wait()
                codes.append(client.post(path, data={**FORM, "recommend": str(i)}).status_code)
            except Exception as exc:  # pragma: no cover - reported below
                errors.append(exc)
            finally:
                s.db.session.remove()

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert sorted(codes) == [200] * 7 + [303]
    with s.app.app_context():
        assert len(_survey_coupons(s)) == 1
        assert _count(s) == 1


# --- translations ---------------------------------------------------------------------------

def test_every_survey_string_is_translated():
    """Each msgid of the survey's code and templates has a translation in es, ro and ru."""
    import importlib.util
    from pathlib import Path

    from babel.messages.extract import extract_from_file

    root = Path(__file__).resolve().parent.parent
    spec = importlib.util.spec_from_file_location("translations_tool_survey", root / "scripts" / "translations.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    package = root / "flask_loyalty"
    sources = [(package / p, "python") for p in ("schemas/survey.py", "services/surveys.py", "web/survey.py")]
    templates = [*(package / "templates/loyalty/survey").glob("*"), *(package / "templates/loyalty/mail").glob("survey_*"),
                 *(package / "templates/loyalty/mail").glob("detractor_alert*")]
    sources += [(t, "jinja2") for t in templates]
    ids = set()
    for path, method in sources:
        for _line, message, _comments, _context in extract_from_file(method, str(path), keywords=tool.KEYWORDS,
                                                                    options={"extensions": ""}):
            ids.add(message[0] if isinstance(message, tuple) else message)
    assert len(ids) > 60
    report = tool.missing()
    assert {locale: sorted(ids & set(missing)) for locale, missing in report.items()} == {"es": [], "ro": [], "ru": []}


# --- the whole journey: plan -> dispatch -> mail -> one click -> form -> figures -------------------

def test_invitation_to_answer_end_to_end(make_shop):
    from datetime import datetime, timedelta, timezone

    from flask_loyalty.models import Message

    sent = []
    s = make_shop(LOYALTY_MAIL_TRANSPORT=sent.append, LOYALTY_TRACKING=False, LOYALTY_SURVEY_DELAY_DAYS=10)
    placed = datetime(2026, 3, 2, 9, 0, tzinfo=timezone.utc)
    with s.app.app_context():
        s.loyalty.upsert_customer("c1", email="ana@example.com", locale="ro")
        s.loyalty.consent.grant("c1", "surveys", source="checkout", double_opt_in=False)
        s.loyalty.record_purchase("o1", "c1", "20.00", placed_at=placed)
        s.loyalty.dispatch(now=placed + timedelta(days=10, hours=1))   # plans the order, then sends
        invite = s.db.session.execute(select(Message).where(Message.kind == "survey_invite")).scalar_one()
        assert invite.status == "sent", (invite.status, invite.reason)
        mail = next(m for m in sent if m["Subject"] == invite.subject)
        html = mail.get_body(("html",)).get_content()
        links = re.findall(r'href="(http://shop\.test/loyalty/survey/[^"?]+\?recommend=(\d+))"', html)
        assert [int(n) for _, n in links] == list(range(11))
        page = s.client.get(links[10][0].replace("http://shop.test", ""))
        assert page.status_code == 200 and "Vă mulțumim, am salvat răspunsul" in page.get_data(as_text=True)
        stats = s.loyalty.surveys.stats()
        assert stats.responses == 1 and stats.nps == 100.0 and stats.invitations == 1 and stats.response_rate == 1.0
        done = s.client.post(links[10][0].replace("http://shop.test", "").split("?")[0],
                             data={"recommend": "10", "source": "friend_family"})
        assert done.status_code == 303
        assert s.loyalty.surveys.stats().by_source["friend_family"] == 1
