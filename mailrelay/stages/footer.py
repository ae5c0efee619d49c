"""Stage footer: renders the tenant's footer for this applicant and splices it into the body parts."""

from __future__ import annotations

import html

from mailrelay.message import Footer
from mailrelay.stages import Copy, Stage, StageContext


def render(copy: Copy) -> Footer:
    template = copy.tenant.footers[copy.footer_name]
    return Footer(
        text=template.text.format(link=copy.link, company=copy.tenant.name),
        # Text put into HTML is escaped (issue 3): the link and the company name are data, not markup.
        html=template.html.format(
            link=html.escape(copy.link, quote=True), company=html.escape(copy.tenant.name)
        ),
    )


def build(context: StageContext) -> Stage:
    def footer(copy: Copy) -> None:
        copy.raw = copy.parsed.decorate(render(copy))

    return footer
