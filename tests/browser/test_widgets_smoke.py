"""The harness's proof, and the facts the status card relies on, seen in a real browser:
ipywidgets render in JupyterLab, a button click reaches the kernel, and a widget's trait set
from a background thread shows up, also while another cell blocks the kernel's shell."""

from __future__ import annotations

import sys

from playwright.sync_api import expect

SETUP = """\
import sys, threading, time
import ipywidgets as widgets
from IPython.display import display

def tick(label, prefix, n, delay):
    for i in range(1, n + 1):
        time.sleep(delay)
        label.value = f"{prefix} {i}"

print(sys.executable)
"""

WIDGETS = """\
clicked = widgets.Label(value="not clicked")
button = widgets.Button(description="Click me")
clicks = []  # the threads that ran the handler
def on_click(_):
    clicks.append(threading.current_thread().name)
    clicked.value = f"clicked {len(clicks)}"
button.on_click(on_click)
ticker = widgets.Label(value="tick 0")
busy = widgets.Label(value="busy 0")
threading.Thread(target=tick, args=(ticker, "tick", 5, 0.2), daemon=True).start()
display(widgets.VBox([clicked, button, ticker, busy]))
"""

BLOCKED = """\
threading.Thread(target=tick, args=(busy, "busy", 3, 0.5), daemon=True).start()
time.sleep(120)
print("slept")
"""


def test_widgets_render_click_and_update_from_a_thread(lab) -> None:
    lab.write_notebook("widgets_smoke", [SETUP, WIDGETS, BLOCKED])
    lab.open("widgets_smoke")

    lab.run_cell(0)
    lab.wait_for_output(0, sys.executable)  # the kernel is this interpreter

    lab.run_cell(1)
    labels = lab.output(1).locator(".widget-label")
    expect(labels).to_have_count(3)  # rendered as widgets, not as their text repr
    # A daemon thread updated the label while the kernel was idle.
    expect(labels.nth(1)).to_have_text("tick 5")
    lab.screenshot("rendered")

    lab.click_button(1, "Click me")
    expect(labels.nth(0)).to_have_text("clicked 1")

    # While cell 2 blocks the shell in time.sleep, its thread's updates still arrive.
    lab.run_cell(2, wait=False)
    expect(lab.prompt(2)).to_have_text("[*]:")
    expect(labels.nth(2)).to_have_text("busy 3")
    lab.screenshot("updated-while-busy")
    assert lab.prompt(2).inner_text() == "[*]:"  # ... while the cell is still sleeping
    assert "slept" not in lab.output(2).inner_text()

    # A click while the shell is busy is not lost (ipykernel 7.4 handles it once the shell
    # is free: widget comms created by a cell are served by the main shell, not a subshell).
    lab.click_button(1, "Click me")
    lab.command("notebook:interrupt-kernel")
    lab.wait_for_output(2, "KeyboardInterrupt")
    lab.wait_until_run(2)
    expect(labels.nth(0)).to_have_text("clicked 2")
