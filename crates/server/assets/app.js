// The demo's browser code: the unmodified npm packages, loaded through the import map.
import "@hotwired/turbo"
import { Application } from "@hotwired/stimulus"
import { createConsumer } from "@rails/actioncable"
import CableReady from "cable_ready"
import StimulusReflex from "stimulus_reflex"

const application = Application.start()
const consumer = createConsumer()
application.consumer = consumer
CableReady.initialize({ consumer })
StimulusReflex.initialize(application, { isolate: true, deprecate: false })

// Clear a submitted form's text input once its reflex has finished.
document.addEventListener("stimulus-reflex:after", (event) => {
  const form = event.target.closest && event.target.closest("form")
  if (form && form.id !== "chat-form") form.reset()
  if (form && form.id === "chat-form") { const t = form.querySelector("#chat-text"); if (t) t.value = "" }
})
window.ferrocable = { application, consumer }
