"""Report page: the figures and tables pinned in this session, in order, each with its view's
spec, an editable caption and notes; reorder, remove, export as one self-contained HTML file (or
a one-figure-per-screen presentation), save to the gallery, and open saved reports and views."""
import secrets
import time

import pandas as pd
import plotly.io as pio
import streamlit as st

from analysis import report as report_mod
from analysis.spec import AnalysisSpec
from analysis.store import default_store
from analysis.safe_text import md, md_link
from pages._share import base_url, keep_report, report_items
from pages._shell import inert_figure

store = default_store()
st.title("Report")

# A saved report opened from a link (?report=<id>) or from the gallery below. It replaces this
# browser's working report only when that is empty or the user says so.
wanted = st.query_params.get("report")
if wanted and st.session_state.get("_report_id") != wanted and st.session_state.get("_report_kept") != wanted:
    body = store.get_doc("report", wanted)
    pinned = report_items()
    if body is None:
        st.warning(f"No saved report with id {md(wanted[:20])} on this server.")
    elif pinned and st.session_state.get("_report_replace") != wanted:
        st.warning(f"The link opens the saved report “{md(body.get('title', ''))}”, which would replace the "
                   f"{len(pinned)} items pinned in this browser.")
        o1, o2, _ = st.columns([1, 1, 2])
        if o1.button("Open the saved report", key="_report_open"):
            st.session_state["_report_replace"] = wanted
            st.rerun()
        if o2.button("Keep my pinned items", key="_report_keep"):
            st.session_state["_report_kept"] = wanted
            st.rerun()
    else:
        st.session_state["_report_items"] = body["items"]
        st.session_state["_report_id"] = wanted
        st.session_state["_report_title"] = body.get("title", "RepLens report")
        st.session_state["_report_notes"] = body.get("notes", "")

items = report_items()
title = st.text_input("Title", value="RepLens report", key="_report_title")
notes = st.text_area("Notes for the whole report (markdown)", key="_report_notes", height=80)

if not items:
    st.info("Nothing pinned yet. Every figure and table in RepLens has a **Pin to report** action below it; "
            "pinned items appear here with the share link of the view they came from.")


def _move(i: int, j: int) -> None:
    items[i], items[j] = items[j], items[i]


def _remove(i: int) -> None:
    items.pop(i)


for i, item in enumerate(items):
    iid = item["id"]
    with st.container(border=True):
        head, up, down, rm = st.columns([8, 1, 1, 1])
        head.markdown(f"**{i + 1}. {md(item.get('caption') or item['title'])}**")
        head.caption(md(f"{item['kind']} from the {item['page']} page · pinned {item.get('pinned', '')}"))
        up.button("↑", key=f"_up_{iid}", on_click=_move, args=(i, i - 1), disabled=i == 0, help="Move up")
        down.button("↓", key=f"_down_{iid}", on_click=_move, args=(i, i + 1), disabled=i == len(items) - 1,
                    help="Move down")
        rm.button("✕", key=f"_rm_{iid}", on_click=_remove, args=(i,), help="Remove from the report")
        item["caption"] = st.text_input("Caption", value=item.get("caption", ""), key=f"_cap_{iid}")
        item["notes"] = st.text_area("Notes (markdown)", value=item.get("notes", ""), key=f"_notes_{iid}",
                                     height=68)
        if item["kind"] == "figure":
            st.plotly_chart(inert_figure(pio.from_json(item["figure"])), theme=None, key=f"_fig_{iid}")
        else:
            import io

            st.dataframe(pd.read_csv(io.StringIO(item["csv"])), hide_index=True, key=f"_tab_{iid}")
            st.download_button("CSV", item["csv"], file_name=f"{iid}.csv", mime="text/csv", key=f"_csv_{iid}")
        try:
            url = AnalysisSpec.from_json(item["spec"]).url(base_url())
            st.markdown(md_link("Open this view", url))
        except Exception as exc:  # an item from an older version keeps its record
            st.caption(f"(view link unavailable: {md(exc)})")

# Captions, notes, order and removals are this browser's working report: kept in the store.
if not keep_report() and items:
    st.caption("This browser does not keep a session cookie, so the pinned items live in this tab only: "
               "save the report to the gallery to keep it.")

# ------------------------------------------------------------------ export and save
if items:
    st.divider()
    large = st.toggle("Presentation style in the HTML report", key="_report_large",
                      help="Larger fonts and thicker lines, as in the presentation (for a report shown on a "
                           "projector). The presentation always uses them.")
    e1, e2, e3 = st.columns(3)
    stem = "".join(c if c.isalnum() else "-" for c in title.lower()).strip("-") or "report"
    e1.download_button("Download HTML report", report_mod.build_html(items, title, base_url=base_url(), notes=notes,
                                                                     large=large),
                       file_name=f"{stem}.html", mime="text/html", icon=":material/download:", key="_dl_report",
                       help="One self-contained file: opens offline, figures stay interactive.")
    e2.download_button("Download presentation", report_mod.build_html(items, title, presentation=True,
                                                                      base_url=base_url(), notes=notes),
                       file_name=f"{stem}-slides.html", mime="text/html", icon=":material/slideshow:",
                       key="_dl_slides", help="One figure per screen, larger fonts and thicker lines; arrow keys "
                                              "move between them.")
    with e3:
        if st.button("Save to the gallery", icon=":material/save:", key="_save_report"):
            rid = st.session_state.get("_report_id") or secrets.token_hex(8)
            store.put_doc("report", rid, {"title": title, "notes": notes, "items": items,
                                          "saved": time.strftime("%Y-%m-%d %H:%M")}, name=title)
            st.session_state["_report_id"] = rid
            st.query_params["report"] = rid
            link = f"{base_url()}/report?report={rid}"
            st.success("Saved. Link: " + md_link(link, link))

# ------------------------------------------------------------------ gallery
st.divider()
st.subheader("Gallery")
query = st.text_input("Search saved reports and views", key="_gallery_q", placeholder="name or content")
reports, views = store.docs("report", query), store.docs("analysis", query)


def _when(t: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(t))


g1, g2 = st.columns(2)
with g1:
    st.markdown(f"**Reports** ({len(reports)})")
    for r in reports[:50]:
        link = f"{base_url()}/report?report={r['id']}"
        st.markdown(f"{md_link(r['name'] or r['id'], link)} · {_when(r['updated'])}")
with g2:
    st.markdown(f"**Saved views** ({len(views)})")
    for v in views[:50]:
        body = store.get_doc("analysis", v["id"]) or {}
        page = (body.get("spec") or {}).get("page", "")
        link = f"{base_url()}/{page}?a={v['id']}"
        st.markdown(f"{md_link(v['name'] or v['id'], link)} · {md(page)} · {_when(v['updated'])}")
if not reports and not views:
    st.caption("Saved reports (button above) and saved views (sidebar › Share this view › Save) appear here.")
